"""Rendering of a :class:`jaxops.plan.Plan` as table rows, aligned text and HTML."""

from __future__ import annotations

import html
from typing import Any

import jax
import numpy as np


def fmt_shape(s: jax.ShapeDtypeStruct) -> str:
    """``f32[b,4]``: a short dtype and the dims of a shape."""
    dt = np.dtype(s.dtype) if not hasattr(s.dtype, "name") else s.dtype
    short = {
        "float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
        "int32": "i32", "int64": "i64", "int8": "i8", "int16": "i16", "uint8": "u8",
        "uint32": "u32", "uint64": "u64", "bool": "bool", "complex64": "c64", "complex128": "c128",
    }.get(str(dt), str(dt))
    return f"{short}[{','.join(str(d) for d in s.shape)}]"


def fmt_num(v: Any) -> str:
    """A count for a table cell: ``?`` for None, ``1.2M`` for large ints, else ``str``."""
    if v is None:
        return "?"
    if isinstance(v, (int, np.integer)):
        v = int(v)
        for unit, div in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
            if abs(v) >= div * 10:
                return f"{v / div:.1f}{unit}"
        return str(v)
    return str(v)


def rows(plan: Any, jax: str = "line") -> list[list[str]]:
    """Table rows of a Plan (header first, ``total`` last) as strings: see ``Plan.rows``."""
    if jax not in ("line", "per-primitive", "none"):
        raise ValueError(f"Plan.rows(jax=...) must be 'line', 'per-primitive' or 'none', got {jax!r}")
    rows = [["#", "op", "inputs", "outputs", "calls", "bytes", "flops", "phase", "scope"]]
    for i, r in enumerate(plan.records):
        name = "  " * r["depth"] + r["op"]
        calls = "?" if r["calls"] is None else str(r["calls"])
        rows.append([
            str(i), name, " ".join(fmt_shape(s) for s in r["inputs"]),
            " ".join(fmt_shape(s) for s in r["outputs"]), calls,
            fmt_num(r["bytes"]), fmt_num(r["flops"]), r["phase"], r["scope"],
        ])
    prims = plan.jax_primitives
    if prims and jax == "line":
        for g in plan.jax_groups:
            n = g["count"]
            rows.append(["", f"(jax: {n} primitives)", "", "", str(n),
                         fmt_num(g["bytes"]), fmt_num(g["flops"]), g["phase"], g["scope"]])
    elif prims and jax == "per-primitive":
        for k in sorted(prims):
            p = prims[k]
            rows.append(["", f"(jax) {k}", "", "", str(p["count"]), fmt_num(p["bytes"]), fmt_num(p["flops"]), "", ""])
    t = plan.totals
    rows.append(["", "total", "", "", str(t["op_calls"]), fmt_num(t["bytes"]), fmt_num(t["flops"]), "", ""])
    return rows


def text(rows: list[list[str]]) -> str:
    """The aligned text table of :func:`rows`' output (rules under the header and above ``total``)."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    right = {0, 4, 5, 6}
    lines = []
    for k, r in enumerate(rows):
        cells = [cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def html_table(plan: Any) -> str:
    """The HTML table of a Plan (``Plan._repr_html_``), captioned with its totals and summary."""
    rows_ = rows(plan)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows_[0])
    body = []
    for k, r in enumerate(rows_[1:]):
        style = ' style="font-weight:bold;border-top:1px solid"' if k == len(rows_) - 2 else ""
        body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    t = plan.totals
    caption = (
        f"jaxops.Plan: {t['op_calls']} op calls, flops {html.escape(fmt_num(t['flops']))}, "
        f"bytes {html.escape(fmt_num(t['bytes']))}; {html.escape(plan.summary())}"
    )
    return (
        f'<table class="jaxops-plan"><caption>{caption}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
