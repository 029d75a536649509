"""Shape-only planning of a whole function: :func:`plan` and :class:`Plan`.

``jaxops.plan(fn, *args, **kwargs)`` traces ``fn`` once on abstract inputs
(``jax.ShapeDtypeStruct`` s, arrays, pytrees of them; symbolic shapes from
``jax.export.symbolic_shape`` work) and walks the resulting jaxpr.  Nothing is
lowered, compiled or run.  Every call of a registered op is a nested ``jit``
named after the op, so each such equation becomes one record:

>>> import jax, jax.numpy as jnp, jaxops
>>> @jaxops.custom_op("plandoc::mm", mutates_args=())
... def mm(a: jax.Array, b: jax.Array) -> jax.Array:
...     return a @ b
>>> b, = jax.export.symbolic_shape("b")
>>> p = jaxops.plan(lambda x, w: mm(x, w), jax.ShapeDtypeStruct((b, 4), jnp.float32),
...                 jax.ShapeDtypeStruct((4, 3), jnp.float32))
>>> p.records[0]["op"], str(p.records[0]["flops"])
('plandoc::mm', '24*b')

Choices documented here:

* **Plain JAX primitives outside ops** are not records (``records`` holds op
  calls only).  They are aggregated per primitive kind in
  :attr:`Plan.jax_primitives` and shown as one ``(jax)`` line in the table
  (``plan.table(jax="per-primitive")`` lists them one line per kind).  Totals
  include them.
* **FLOPs**: a cost function registered with :func:`register_cost` wins;
  otherwise the primitives inside the op's jaxpr are counted: ``dot_general``
  is ``2 * out_size * contracted_size``, convolutions ``2 * out_size *
  in_features_per_group * kernel_size``, reductions the input size, pure data
  movement (reshape, transpose, broadcast, slicing, ...) zero, any other
  primitive (elementwise) its output size.  A host op (``pure_callback``) or a
  ``while`` loop inside an op makes its FLOPs ``None`` (unknown).
* **Bytes** of a record are its input plus output bytes.
* **Control flow**: op calls inside ``lax.scan`` get ``"calls"`` = the trip
  count (records are per call site; totals multiply); inside ``while_loop``
  ``"calls"`` is ``None`` and totals count them once; every ``cond`` branch is
  listed, so totals are an upper bound.
* **Under** ``jax.grad`` the forward and the backward (transposed) copies of
  each op are separate records, in program order.
* **Ops inside ops** are records too, with ``"depth"`` > 0; totals count only
  depth-0 records (an outer op's FLOPs already include its inner ops).
* ``totals["parameters"]``: when ``fn`` takes two or more positional arguments,
  the element count of the array leaves of the first one (JAX's
  ``loss(params, *data)`` convention); otherwise ``None``.
  ``totals["activation_bytes"]``: bytes of every intermediate value produced
  (op outputs and primitive outputs at top level), an upper bound that ignores
  buffer reuse.

Planning the same function object with the same abstract signature, static
arguments and op registrations is cached: no retrace.
"""

from __future__ import annotations

import html
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr

from jaxops import registry as _registry

__all__ = ["Plan", "plan", "register_cost", "is_planning"]

#: Cost functions by op name: ``fn(inputs, outputs) -> flops`` (lists of ShapeDtypeStruct).
_COSTS: dict[str, Callable[[list[jax.ShapeDtypeStruct], list[jax.ShapeDtypeStruct]], Any]] = {}
_COST_GEN = [0]

#: Depth of active :func:`plan` traces (read by :func:`is_planning`).
_PLANNING = [0]

_ZERO_FLOP = frozenset(
    {
        "reshape", "broadcast_in_dim", "squeeze", "expand_dims", "transpose", "slice",
        "dynamic_slice", "dynamic_update_slice", "gather", "concatenate", "pad", "rev",
        "iota", "copy", "copy_p", "convert_element_type", "bitcast_convert_type",
        "device_put", "stop_gradient", "sharding_constraint", "split", "optimization_barrier",
        "squeeze_p", "select_and_gather_add", "zeros_like", "full_like", "empty",
    }
)
_REDUCTIONS = frozenset(
    {
        "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
        "reduce_xor", "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin",
        "cumlogsumexp", "reduce_precision", "sort", "top_k",
    }
)
_UNKNOWN = frozenset({"pure_callback", "io_callback", "callback", "host_callback"})
_JIT_NAMES = frozenset({"jit", "pjit"})


def register_cost(
    op_or_name: Any,
    fn: Callable[[list[jax.ShapeDtypeStruct], list[jax.ShapeDtypeStruct]], Any] | None = None,
) -> Any:
    """Register a FLOP count for an op, used by :func:`plan` instead of counting primitives.

    ``fn(inputs, outputs)`` gets the call's array inputs and outputs as lists of
    ``jax.ShapeDtypeStruct`` and returns an int (or a symbolic expression).
    Works as a decorator too.

    >>> import jaxops
    >>> # @jaxops.plan.register_cost("mylib::matmul")
    >>> # def _(inputs, outputs):
    >>> #     (m, k), (_, n) = inputs[0].shape, inputs[1].shape
    >>> #     return 2 * m * k * n
    """
    name = op_or_name if isinstance(op_or_name, str) else _registry.as_op(op_or_name).name

    def inner(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise TypeError(f"{name}: register_cost needs a callable, got {type(f).__name__}")
        _COSTS[name] = f
        _COST_GEN[0] += 1
        return f

    return inner if fn is None else inner(fn)


def is_planning() -> bool:
    """True while :func:`plan` is tracing (fakes may consult it).

    >>> is_planning()
    False
    """
    return _PLANNING[0] > 0


# ---------------------------------------------------------------- small helpers
class _Info:
    """Cached facts about one abstract value: its ShapeDtypeStruct, element count, bytes."""

    __slots__ = ("sds", "size", "nbytes")

    def __init__(self, aval: Any) -> None:
        shape = tuple(getattr(aval, "shape", ()))
        dtype = getattr(aval, "dtype", None)
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            itemsize = getattr(dtype, "itemsize", 0) or 0
        self.sds = jax.ShapeDtypeStruct(shape, dtype)
        self.size = math.prod(shape)
        self.nbytes = self.size * itemsize


_AVAL_CACHE: dict[Any, _Info] = {}


def _info(aval: Any) -> _Info:
    """:class:`_Info` of an abstract value (cached per aval)."""
    try:
        return _AVAL_CACHE[aval]
    except KeyError:
        pass
    except TypeError:
        return _Info(aval)
    info = _AVAL_CACHE[aval] = _Info(aval)
    if len(_AVAL_CACHE) > 50_000:
        _AVAL_CACHE.clear()
    return info


class _Acc:
    """A sum of ints and symbolic expressions, cheap to add to.

    Symbolic dimension arithmetic costs tens of microseconds per operation, so
    symbolic terms are counted per distinct object and multiplied out once in
    :meth:`value`.  Adding ``None`` marks the sum as partly unknown (``value``
    then gives the sum of the known terms; ``unknown`` counts the others).
    """

    __slots__ = ("i", "terms", "unknown")

    def __init__(self) -> None:
        self.i = 0
        self.terms: dict[int, list[Any]] = {}
        self.unknown = 0

    def add(self, v: Any, n: int = 1) -> None:
        if type(v) is int:
            self.i += v * n
        elif v is None:
            self.unknown += 1
        elif isinstance(v, _Acc):
            self.i += v.i * n
            self.unknown += v.unknown
            for k, (t, c) in v.terms.items():
                self.add_term(k, t, c * n)
        else:
            self.add_term(id(v), v, n)

    def add_term(self, k: int, t: Any, n: int) -> None:
        cur = self.terms.get(k)
        if cur is None:
            self.terms[k] = [t, n]
        else:
            cur[1] += n

    def value(self) -> Any:
        out: Any = self.i
        for t, c in self.terms.values():
            out = out + (t if c == 1 else t * c)
        return out


def _sub_jaxprs(eqn: Any) -> list[tuple[Any, Any]]:
    """``(jaxpr, multiplier)`` of every jaxpr nested in an equation's params."""
    name = eqn.primitive.name
    out: list[tuple[Any, Any]] = []
    mult: Any = 1
    if name == "scan":
        mult = eqn.params.get("length", 1)
    elif name == "while":
        mult = None
    for v in eqn.params.values():
        if isinstance(v, (tuple, list)):
            for w in v:
                j = _as_jaxpr(w)
                if j is not None:
                    out.append((j, mult))
        else:
            j = _as_jaxpr(v)
            if j is not None:
                out.append((j, mult))
    return out


def _as_jaxpr(v: Any) -> Any:
    if isinstance(v, ClosedJaxpr):
        return v.jaxpr
    if isinstance(v, Jaxpr):
        return v
    return None


def _prim_flops(eqn: Any) -> Any:
    """FLOPs of one primitive equation without nested jaxprs (None when unknown)."""
    name = eqn.primitive.name
    if name in _ZERO_FLOP:
        return 0
    if name in _UNKNOWN:
        return None
    outs = eqn.outvars
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        contracted = math.prod(lhs[d] for d in lc)
        return 2 * _info(outs[0].aval).size * contracted
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        rhs_spec = getattr(dn, "rhs_spec", None)
        if rhs_spec is None:
            kernel = math.prod(rhs[1:])
        else:
            kernel = math.prod(rhs[d] for d in rhs_spec[1:])
        return 2 * _info(outs[0].aval).size * kernel
    vs = eqn.invars if name in _REDUCTIONS else outs
    if len(vs) == 1:
        return _info(vs[0].aval).size
    acc = _Acc()
    for v in vs:
        acc.add(_info(v.aval).size)
    return acc.value()


class _PrimAgg:
    """Aggregate of one primitive kind outside ops."""

    __slots__ = ("count", "flops", "bytes", "output_bytes")

    def __init__(self) -> None:
        self.count = 0
        self.flops = _Acc()
        self.bytes = _Acc()
        self.output_bytes = _Acc()

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "flops": self.flops.value(),
            "bytes": self.bytes.value(),
            "output_bytes": self.output_bytes.value(),
        }


class _Ctx:
    """State of one walk: op table, records, primitive aggregates."""

    __slots__ = ("ops", "records", "prims", "used")

    def __init__(self, ops: dict[str, Any]) -> None:
        self.ops = ops
        self.records: list[dict[str, Any]] = []
        self.prims: dict[str, _PrimAgg] = {}
        self.used: dict[str, Any] = {}


class _Body:
    """What one op body (an inner jaxpr) contributes; memoized per jaxpr object."""

    __slots__ = ("jaxpr", "gen", "used", "flops", "nested", "ins", "outs", "in_bytes", "out_bytes", "total_bytes")


# id(inner jaxpr) -> _Body (the jaxpr is kept alive by the entry, so ids are not reused)
_BODY_MEMO: dict[int, _Body] = {}


def _body(eqn: Any, jaxpr: Any, ctx: _Ctx) -> _Body:
    """The memoized :class:`_Body` of an op call's inner jaxpr."""
    hit = _BODY_MEMO.get(id(jaxpr))
    if (
        hit is not None
        and hit.jaxpr is jaxpr
        and hit.gen == _COST_GEN[0]
        and all(ctx.ops.get(n) is o for n, o in hit.used.items())
    ):
        return hit
    sub = _Ctx(ctx.ops)
    b = _Body()
    b.jaxpr = jaxpr
    b.gen = _COST_GEN[0]
    flops = _walk(jaxpr, sub, 1, 1, top=False)
    b.flops = flops.value() if not flops.unknown else None
    b.used = sub.used
    b.nested = sub.records
    ins = [_info(v.aval) for v in eqn.invars]
    outs = [_info(v.aval) for v in eqn.outvars]
    b.ins = [i.sds for i in ins]
    b.outs = [o.sds for o in outs]
    acc = _Acc()
    for i in ins:
        acc.add(i.nbytes)
    b.in_bytes = acc.value()
    acc = _Acc()
    for o in outs:
        acc.add(o.nbytes)
    b.out_bytes = acc.value()
    b.total_bytes = b.in_bytes + b.out_bytes
    if len(_BODY_MEMO) > 20_000:
        _BODY_MEMO.clear()
    _BODY_MEMO[id(jaxpr)] = b
    return b


def _walk(jaxpr: Any, ctx: _Ctx, calls: Any, depth: int, *, top: bool) -> _Acc:
    """Walk ``jaxpr``: append op records to ``ctx``; return its FLOPs.

    ``top`` is True outside any op: primitives there are aggregated into ``ctx.prims``.
    ``calls`` is how often this jaxpr runs per call of the planned function (None: unknown).
    """
    flops = _Acc()
    ops = ctx.ops
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        if prim in _JIT_NAMES:
            name = eqn.params.get("name")
            op = ops.get(name) if type(name) is str else None
            if op is not None:
                flops.add(_op_record(eqn, op, name, ctx, calls, depth))
                continue
        subs = _sub_jaxprs(eqn)
        if subs:
            for j, mult in subs:
                c = None if (calls is None or mult is None) else calls * mult
                f = _walk(j, ctx, c, depth, top=top)
                if mult is None:
                    flops.add(None)
                else:
                    flops.add(f, mult)
            continue
        f = _prim_flops(eqn)
        flops.add(f)
        if top:
            agg = ctx.prims.get(prim)
            if agg is None:
                agg = ctx.prims[prim] = _PrimAgg()
            n = 1 if calls is None else calls
            agg.count += n
            agg.flops.add(f, n)
            for v in eqn.outvars:
                nb = _info(v.aval).nbytes
                agg.output_bytes.add(nb, n)
                agg.bytes.add(nb, n)
            for v in eqn.invars:
                agg.bytes.add(_info(v.aval).nbytes, n)
    return flops


def _op_record(eqn: Any, op: Any, name: str, ctx: _Ctx, calls: Any, depth: int) -> Any:
    """Append the record of one op call (and of ops nested in it); return its FLOPs."""
    ctx.used[name] = op
    inner = _as_jaxpr(eqn.params.get("jaxpr"))
    b = _body(eqn, inner, ctx)
    ctx.used.update(b.used)
    cost = _COSTS.get(name) or _COSTS.get(op.qualname)
    if cost is not None:
        try:
            flops = cost(list(b.ins), list(b.outs))
        except Exception as e:  # noqa: BLE001 - a broken cost function must name the op
            raise RuntimeError(f"{name}: the cost function registered with register_cost failed: {e}") from e
    else:
        flops = b.flops
    ctx.records.append({
        "op": name,
        "inputs": list(b.ins),
        "outputs": list(b.outs),
        "bytes": b.total_bytes,
        "input_bytes": b.in_bytes,
        "output_bytes": b.out_bytes,
        "flops": flops,
        "calls": calls,
        "depth": depth - 1,
        "host": op.kernels.any_host,
    })
    for r in b.nested:
        r2 = dict(r)
        r2["depth"] = r["depth"] + depth
        r2["calls"] = None if (calls is None or r["calls"] is None) else calls * r["calls"]
        ctx.records.append(r2)
    return flops


# ----------------------------------------------------------------------- Plan
def _fmt_shape(s: jax.ShapeDtypeStruct) -> str:
    dt = np.dtype(s.dtype) if not hasattr(s.dtype, "name") else s.dtype
    short = {
        "float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
        "int32": "i32", "int64": "i64", "int8": "i8", "int16": "i16", "uint8": "u8",
        "uint32": "u32", "uint64": "u64", "bool": "bool", "complex64": "c64", "complex128": "c128",
    }.get(str(dt), str(dt))
    return f"{short}[{','.join(str(d) for d in s.shape)}]"


def _fmt_num(v: Any) -> str:
    if v is None:
        return "?"
    if isinstance(v, (int, np.integer)):
        v = int(v)
        for unit, div in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
            if abs(v) >= div * 10:
                return f"{v / div:.1f}{unit}"
        return str(v)
    return str(v)


class Plan:
    """The result of :func:`plan`: op-call records, primitive aggregates and totals.

    Iterating yields the records (dicts); ``str(plan)`` is an aligned table
    ending in a ``total`` line; ``_repr_html_`` renders it in notebooks;
    :meth:`summary` adds parameters and activation bytes.

    >>> # for rec in jaxops.plan(model, x): print(rec["op"], rec["outputs"], rec["flops"])
    """

    def __init__(
        self,
        records: list[dict[str, Any]],
        jax_primitives: dict[str, dict[str, Any]],
        totals: dict[str, Any],
        outputs: Any,
    ) -> None:
        self.records = records
        self.jax_primitives = jax_primitives
        self.totals = totals
        #: The function's outputs as a pytree of ``jax.ShapeDtypeStruct``.
        self.outputs = outputs

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.records[i]

    def __repr__(self) -> str:
        return (
            f"<jaxops.Plan {len(self.records)} op calls, flops={self.totals['flops']}, "
            f"bytes={self.totals['bytes']}>"
        )

    def rows(self, jax: str = "line") -> list[list[str]]:
        """Table rows (header first, ``total`` last) as strings.

        ``jax`` is ``"line"`` (one aggregated ``(jax)`` row), ``"per-primitive"``
        or ``"none"``.
        """
        if jax not in ("line", "per-primitive", "none"):
            raise ValueError(f"Plan.rows(jax=...) must be 'line', 'per-primitive' or 'none', got {jax!r}")
        rows = [["#", "op", "inputs", "outputs", "calls", "bytes", "flops"]]
        for i, r in enumerate(self.records):
            name = "  " * r["depth"] + r["op"]
            calls = "?" if r["calls"] is None else str(r["calls"])
            rows.append([
                str(i), name, " ".join(_fmt_shape(s) for s in r["inputs"]),
                " ".join(_fmt_shape(s) for s in r["outputs"]), calls,
                _fmt_num(r["bytes"]), _fmt_num(r["flops"]),
            ])
        prims = self.jax_primitives
        if prims and jax == "line":
            n = sum(p["count"] for p in prims.values())
            rows.append(["", f"(jax: {n} primitives)", "", "", str(n),
                         _fmt_num(self.totals["jax_bytes"]), _fmt_num(self.totals["jax_flops"])])
        elif prims and jax == "per-primitive":
            for k in sorted(prims):
                p = prims[k]
                rows.append(["", f"(jax) {k}", "", "", str(p["count"]), _fmt_num(p["bytes"]), _fmt_num(p["flops"])])
        t = self.totals
        rows.append(["", "total", "", "", str(t["op_calls"]), _fmt_num(t["bytes"]), _fmt_num(t["flops"])])
        return rows

    def table(self, jax: str = "line") -> str:
        """The aligned text table (see :meth:`rows`)."""
        rows = self.rows(jax)
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        right = {0, 4, 5, 6}
        lines = []
        for k, r in enumerate(rows):
            cells = [cell.rjust(w) if c in right else cell.ljust(w) for c, (cell, w) in enumerate(zip(r, widths))]
            lines.append("  ".join(cells).rstrip())
            if k == 0 or k == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: parameters, activation bytes, records with unknown FLOPs."""
        t = self.totals
        extra = []
        if t.get("parameters") is not None:
            extra.append(f"parameters {_fmt_num(t['parameters'])}")
        extra.append(f"activation_bytes {_fmt_num(t['activation_bytes'])}")
        if t["unknown_flops"]:
            extra.append(f"{t['unknown_flops']} record(s) with unknown flops")
        return "; ".join(extra)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        rows = self.rows()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = []
        for k, r in enumerate(rows[1:]):
            style = ' style="font-weight:bold;border-top:1px solid"' if k == len(rows) - 2 else ""
            body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        t = self.totals
        caption = (
            f"jaxops.Plan: {t['op_calls']} op calls, flops {html.escape(_fmt_num(t['flops']))}, "
            f"bytes {html.escape(_fmt_num(t['bytes']))}; {html.escape(self.summary())}"
        )
        return (
            f'<table class="jaxops-plan"><caption>{caption}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
        )


def _totals(ctx: _Ctx, in_avals: list[Any], out_avals: list[Any], params: Any) -> dict[str, Any]:
    op_flops, op_bytes, act = _Acc(), _Acc(), _Acc()
    unknown = 0
    n_calls = 0
    for r in ctx.records:
        if r["flops"] is None:
            unknown += 1
        if r["depth"]:
            continue
        n = 1 if r["calls"] is None else r["calls"]
        n_calls += n
        if r["flops"] is not None:
            op_flops.add(r["flops"], n)
        op_bytes.add(r["bytes"], n)
        act.add(r["output_bytes"], n)
    jax_flops, jax_bytes = _Acc(), _Acc()
    for p in ctx.prims.values():
        jax_flops.add(p.flops)
        jax_bytes.add(p.bytes)
        act.add(p.output_bytes)
    flops, nbytes = _Acc(), _Acc()
    flops.add(op_flops)
    flops.add(jax_flops)
    nbytes.add(op_bytes)
    nbytes.add(jax_bytes)
    ins, outs = _Acc(), _Acc()
    for a in in_avals:
        ins.add(_info(a).nbytes)
    for a in out_avals:
        outs.add(_info(a).nbytes)
    return {
        "flops": flops.value(),
        "bytes": nbytes.value(),
        "op_flops": op_flops.value(),
        "op_bytes": op_bytes.value(),
        "jax_flops": jax_flops.value(),
        "jax_bytes": jax_bytes.value(),
        "op_calls": n_calls,
        "unknown_flops": unknown + jax_flops.unknown,
        "parameters": params,
        "activation_bytes": act.value(),
        "input_bytes": ins.value(),
        "output_bytes": outs.value(),
    }


# ----------------------------------------------------------------------- plan
def _is_array_leaf(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct, np.generic)) or (
        hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type)
    )


def _leaf_key(x: Any) -> Any:
    return (tuple(x.shape), str(x.dtype))


_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, Plan]] = weakref.WeakKeyDictionary()
_STRONG_CACHE: dict[Any, dict[Any, Plan]] = {}


def _fn_cache(fn: Any) -> dict[Any, Plan] | None:
    try:
        return _CACHE.setdefault(fn, {})
    except TypeError:
        try:
            hash(fn)
        except TypeError:
            return None
        if len(_STRONG_CACHE) > 256:
            _STRONG_CACHE.clear()
        return _STRONG_CACHE.setdefault(fn, {})


def _still_valid(p: Plan) -> bool:
    for name, op in p._ops.items():  # type: ignore[attr-defined]
        q, _, ov = name.partition(".") if "." in name.split("::", 1)[-1] else (name, "", "")
        entry = _registry.get(q)
        if entry is None or entry.get(ov) is not op:
            return False
    return True


def plan(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Plan:
    """Shape-only run of ``fn(*args, **kwargs)``: one record per op call, plus totals.

    Array leaves of ``args``/``kwargs`` (``jax.Array``, ``np.ndarray``,
    ``jax.ShapeDtypeStruct``, symbolic shapes included) are abstract; every
    other leaf is a static Python value.  Nothing is compiled or run.

    >>> import jax, jax.numpy as jnp, jaxops
    >>> p = jaxops.plan(lambda x: jnp.sin(x) * 2, jax.ShapeDtypeStruct((8,), jnp.float32))
    >>> p.totals["flops"], p.records
    (16, [])
    """
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    is_arr = [_is_array_leaf(v) for v in leaves]
    abstract = [jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) if a and not isinstance(v, jax.ShapeDtypeStruct) else v
                for v, a in zip(leaves, is_arr)]
    key: Any = None
    cache = _fn_cache(fn)
    if cache is not None:
        try:
            key = (
                treedef,
                tuple(_leaf_key(v) if a else ("static", type(v), v) for v, a in zip(abstract, is_arr)),
                _registry.registrations(),  # any registration may change a plan
            )
            hit = cache.get(key)
        except TypeError:
            key, hit = None, None
        if hit is not None and _still_valid(hit):
            return hit
    arr_pos = [i for i, a in enumerate(is_arr) if a]
    arr_in = [abstract[i] for i in arr_pos]

    def flat(*arrs: Any) -> Any:
        vals = list(leaves)
        for i, a in zip(arr_pos, arrs):
            vals[i] = a
        a, k = jax.tree_util.tree_unflatten(treedef, vals)
        return fn(*a, **k)

    ops = {op.name: op for op in _registry.all_ops()}
    _PLANNING[0] += 1
    try:
        traced = jax.jit(flat).trace(*arr_in)
    finally:
        _PLANNING[0] -= 1
    closed = traced.jaxpr
    ctx = _Ctx(ops)
    _walk(closed.jaxpr, ctx, 1, 1, top=True)
    params = None
    if len(args) >= 2:
        first = [v for v in jax.tree_util.tree_leaves(args[0]) if _is_array_leaf(v)]
        params = sum((math.prod(tuple(v.shape)) for v in first), 0)
    out_avals = list(closed.out_avals)
    totals = _totals(ctx, [a for a in closed.in_avals], out_avals, params)
    outputs = jax.tree_util.tree_map(
        lambda v: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype), traced.out_info
    )
    prims = {k: v.as_dict() for k, v in ctx.prims.items()}
    result = Plan(ctx.records, prims, totals, outputs)
    result._ops = dict(ctx.used)  # type: ignore[attr-defined]
    if cache is not None and key is not None:
        if len(cache) > 64:
            cache.clear()
        cache[key] = result
    return result


plan.register_cost = register_cost  # type: ignore[attr-defined]
