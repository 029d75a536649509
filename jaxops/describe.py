"""``describe_op``: what is registered for an op, in words (used by ``jaxops list`` and the demo).

>>> import jaxops
>>> op = jaxops.define("describedoc::neg", "(Tensor x) -> Tensor")
>>> describe_op(op)["kernels"]
'none'
"""

from __future__ import annotations

from typing import Any


def _kernels(op: Any) -> list[tuple[str, str, str]]:
    """``(device, "host"|"traceable", where)`` per registered kernel."""
    table = getattr(op, "kernels", None)
    try:
        items = list(table.items()) if table is not None else []
    except Exception:  # noqa: BLE001 - report what can be read
        items = []
    out = []
    for device, kernel in items:
        label = "host" if getattr(kernel, "host", False) else "traceable"
        out.append((str(device), label, str(getattr(kernel, "where", "?"))))
    return out


def _any_host(op: Any) -> bool:
    return any(label == "host" for _, label, _ in _kernels(op))


def describe_op(op: Any) -> dict[str, str]:
    """What is registered for ``op``: ``name``, ``schema``, ``kernels``, ``fake``, ``autograd``, ``vmap``.

    Each value is a short human-readable string; "derived" entries say where the
    behaviour comes from when nothing is registered (annotations, JAX tracing
    the body, a per-example loop).  Attributes are read defensively, so ops from
    older or newer jaxops versions still describe.
    """
    host = _any_host(op)
    kernels = ", ".join(f"{dev}: {label}" for dev, label, _ in _kernels(op)) or "none"

    d = getattr(op, "definition", None)
    fake_reg = getattr(d, "fake", None)
    if fake_reg is not None:
        fake = f"registered ({getattr(fake_reg, 'where', '?')})"
    elif getattr(d, "derived_fake", None) is not None:
        fake = "derived (jaxtyping annotations)"
    elif not host:
        fake = "derived (JAX traces the body)"
    else:
        fake = "missing (tracing this host op raises; add register_fake)"

    grad_reg = getattr(d, "autograd", None)
    if grad_reg is not None:
        autograd = f"registered ({getattr(grad_reg, 'where', '?')})"
    elif not host:
        autograd = "derived (JAX differentiates the body)"
    else:
        autograd = "none (a host op: the autograd fallback mode decides: warn/nothing/error)"

    if getattr(d, "vmap_rule", None) is not None:
        vmap = "registered (register_vmap rule)"
    elif getattr(op, "vmap_method", None):
        vmap = f"vmap_method={op.vmap_method!r}"
    elif not host:
        vmap = "derived (JAX batches the body)"
    else:
        vmap = "derived (one kernel call per example)"

    extra = []
    if getattr(d, "sharding_rule", None) is not None:
        extra.append("sharding rule")
    tags = getattr(op, "tags", ())
    if tags:
        extra.append("tags " + ", ".join(t.name for t in tags))
    mutated = sorted(getattr(op, "mutated_args", ()) or ())
    if mutated:
        extra.append("mutates " + ", ".join(mutated))
    return {
        "name": str(getattr(op, "name", "?")),
        "schema": str(getattr(op, "schema", "?")),
        "kernels": kernels,
        "fake": fake,
        "autograd": autograd,
        "vmap": vmap,
        "other": "; ".join(extra),
    }


__all__ = ["describe_op"]
