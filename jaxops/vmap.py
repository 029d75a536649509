"""Batching rules for ops: ``op.register_vmap(fn)``.

A rule is PyTorch's ``fn(info, in_dims, *args, **kwargs) -> (output, out_dims)``:

* ``info.batch_size`` is the size of the vmapped axis;
* ``in_dims`` holds one entry per *positional* argument: an int (the batch
  axis of that array) or ``None`` (not batched, or not an array); a list
  argument gets a list of entries (``None`` for unbatched elements and holes);
* keyword-only (non-array) arguments are passed through as ``**kwargs``;
* ``out_dims`` is an int or ``None`` for every output at once, or a structure
  that matches ``output`` (a tuple per output, a list per list output).

The rule is installed with :func:`jax.custom_batching.custom_vmap` *inside*
the op's autograd wrapper (``run_kernels`` runs there), so it composes with
``register_autograd`` in both orders (``vmap(grad(op))`` and
``grad(vmap(op))``), honours any ``in_axes``/``out_axes`` (JAX moves the batch
axes to the front before the rule runs and where ``out_axes`` asks after it)
and nests (a rule that calls the op again gets batched by the rule of the
next level).  An exception raised by the rule (e.g. ``NotImplementedError``
for a data-dependent op) reaches the caller of ``jax.vmap``.

>>> import jax, jax.numpy as jnp, numpy as np, jaxops
>>> @jaxops.custom_op("vmapdoc::twice", mutates_args=(), host=True)
... def twice(x: jax.Array) -> jax.Array:
...     return np.asarray(x) * 2
>>> _ = twice.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
>>> @twice.register_vmap
... def _(info, in_dims, x):
...     return twice(x), in_dims[0]     # the host kernel handles the whole batch
>>> jax.vmap(twice)(jnp.ones((3, 2))).shape
(3, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from custom_vjp.rules import VmapInfo

if TYPE_CHECKING:
    from jaxops.op import CustomOp


def register_vmap(op: CustomOp, fn: Callable[..., Any]) -> None:
    """Install ``fn`` as ``op``'s batching rule (re-registering replaces the rule).

    >>> # jaxops.vmap.register_vmap(op, lambda info, in_dims, x: (op(x), in_dims[0]))
    """
    if not callable(fn):
        raise TypeError(f"{op.name}: register_vmap expects a callable rule, got {type(fn).__name__}")
    op._vmap_rule = fn
    op._rebuild()


def _in_dims(op: CustomOp, values: list[Any], batched: list[Any]) -> tuple[Any, ...]:
    """PyTorch-style ``in_dims`` for the positional parameters."""
    dims: list[Any] = []
    for p, v, b in zip(op._binder.params[: op._binder.n_positional], values, batched):
        if not p.is_array or v is None:
            dims.append(None)
        elif p.kind == "tensor":
            dims.append(0 if b else None)
        else:
            dims.append([None if e is None or not f else 0 for e, f in zip(v, b)])
    return tuple(dims)


def _flat_dims(op: CustomOp, out: Any, dims: Any, where: str) -> list[Any]:
    """Broadcast ``dims`` (a prefix of ``out``'s structure) onto ``out``'s leaves."""
    if dims is None or (isinstance(dims, (int, np.integer)) and not isinstance(dims, bool)):
        return [None if dims is None else int(dims)] * len(jax.tree_util.tree_leaves(out))
    if isinstance(dims, (tuple, list)) and isinstance(out, (tuple, list)):
        if len(dims) != len(out):
            raise ValueError(
                f"{op.name}: the vmap rule returned out_dims {dims!r} with {len(dims)} entries for "
                f"{where} with {len(out)} entries; give one out_dim per output (or one int for all)"
            )
        flat: list[Any] = []
        for i, (o, d) in enumerate(zip(out, dims)):
            flat.extend(_flat_dims(op, o, d, f"{where}[{i}]"))
        return flat
    raise ValueError(
        f"{op.name}: the vmap rule returned out_dims {dims!r} that does not match {where} "
        f"({type(out).__name__}); out_dims must be an int, None, or a tuple/list shaped like the output"
    )


def _normalize_rule_output(op: CustomOp, result: Any) -> tuple[Any, Any]:
    """``(out, out_dims)`` from the user's rule -> ``(out, out_batched)`` for ``custom_vmap``."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise ValueError(
            f"{op.name}: a vmap rule must return a pair (output, out_dims), got {type(result).__name__}"
        )
    out, dims = result
    leaves, tree = jax.tree_util.tree_flatten(out)
    flat_dims = _flat_dims(op, out, dims, "the output")
    fixed: list[Any] = []
    batched: list[bool] = []
    for i, (x, d) in enumerate(zip(leaves, flat_dims)):
        x = jnp.asarray(x)
        if d is None:
            fixed.append(x)
            batched.append(False)
            continue
        if not -x.ndim <= d < x.ndim:
            raise ValueError(
                f"{op.name}: the vmap rule says output leaf {i} is batched along dim {d}, but it "
                f"has only {x.ndim} dims (shape {tuple(x.shape)})"
            )
        fixed.append(jnp.moveaxis(x, d, 0))
        batched.append(True)
    return (
        jax.tree_util.tree_unflatten(tree, fixed),
        jax.tree_util.tree_unflatten(tree, batched),
    )


def run_with_rule(op: CustomOp, values: list[Any], run_plain: Callable[[CustomOp, list[Any]], Any]) -> Any:
    """Run ``run_plain(op, values)`` under a ``custom_vmap`` whose batching rule is the op's rule.

    Called from ``run_kernels`` (inside the op's autograd wrapper) when the op has
    a rule; without vmap it is just ``run_plain``.

    >>> # out = run_with_rule(op, values, jaxops.op._run_kernels_plain)
    """
    rule = op._vmap_rule
    params = op._binder.params
    leaves, treedef = jax.tree_util.tree_flatten([v if p.is_array else None for p, v in zip(params, values)])
    if rule is None or not leaves:
        return run_plain(op, values)

    def rebuild(flat: Any) -> list[Any]:
        arrs = jax.tree_util.tree_unflatten(treedef, list(flat))
        return [a if p.is_array else v for p, a, v in zip(params, arrs, values)]

    @jax.custom_batching.custom_vmap
    def call(*flat: Any) -> Any:
        return run_plain(op, rebuild(flat))

    def batching_rule(axis_size: int, in_batched: Any, *flat: Any) -> tuple[Any, Any]:
        vals = rebuild(flat)
        batched = jax.tree_util.tree_unflatten(treedef, list(in_batched))
        in_dims = _in_dims(op, vals, batched)
        pos, kw = op._binder.split_call(vals)
        return _normalize_rule_output(op, rule(VmapInfo(int(axis_size)), in_dims, *pos, **kw))

    batching_rule.__name__ = f"{op.name} vmap rule"
    call.def_vmap(batching_rule)
    return call(*leaves)


__all__ = ["register_vmap", "run_with_rule"]
