"""Batching rules for ops: ``op.register_vmap(fn)``.

A rule is PyTorch's ``fn(info, in_dims, *args, **kwargs) -> (output, out_dims)``:

* ``info.batch_size`` is the size of the vmapped axis;
* ``in_dims`` holds one entry per *positional* argument: an int (the batch
  axis of that array) or ``None`` (not batched, or not an array); a list
  argument gets a list of entries (``None`` for unbatched elements and holes);
* keyword-only (non-array) arguments are passed through as ``**kwargs``;
* ``out_dims`` is an int or ``None`` for every output at once, or a structure
  that matches ``output`` (a tuple per output, a list per list output).

The rule is installed by :func:`stage` with
:func:`jax.custom_batching.custom_vmap` *inside* the op's autograd stage, so it
composes with ``register_autograd`` in both orders (``vmap(grad(op))`` and
``grad(vmap(op))``), honours any ``in_axes``/``out_axes`` (JAX moves the batch
axes to the front before the rule runs and where ``out_axes`` asks after it)
and nests (a rule that calls the op again gets batched by the rule of the
next level).  An exception raised by the rule (e.g. ``NotImplementedError``
for a data-dependent op) reaches the caller of ``jax.vmap``.  The stage also
gives the ``custom_vmap`` a JVP (``jax.jvp`` of the stage below it): a
traceable op with a rule and no ``register_autograd`` stays differentiable
(``grad``, ``vmap(grad)``, ``grad(vmap)``, ``jax.jvp``).

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

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from custom_vjp.rules import VmapInfo
from jaxops.definition import OpDefinition


def _in_dims(defn: OpDefinition, values: list[Any], idx: list[int], batched: list[Any]) -> tuple[Any, ...]:
    """PyTorch-style ``in_dims`` for the positional parameters (``batched`` per operand at ``idx``)."""
    per_param: list[Any] = [None] * defn.binder.n
    for i, b in zip(idx, batched):
        per_param[i] = b
    dims: list[Any] = []
    for p, v, b in zip(defn.binder.params[: defn.binder.n_positional], values, per_param):
        if (not p.is_array and not isinstance(v, jax.core.Tracer)) or v is None:
            dims.append(None)
        elif p.kind != "tensor_list":  # an array, or a traced scalar
            dims.append(0 if b else None)
        else:
            dims.append([None if e is None or not f else 0 for e, f in zip(v, b)])
    return tuple(dims)


def _flat_dims(defn: OpDefinition, out: Any, dims: Any, where: str) -> list[Any]:
    """Broadcast ``dims`` (a prefix of ``out``'s structure) onto ``out``'s leaves."""
    if dims is None or (isinstance(dims, (int, np.integer)) and not isinstance(dims, bool)):
        return [None if dims is None else int(dims)] * len(jax.tree_util.tree_leaves(out))
    if isinstance(dims, (tuple, list)) and isinstance(out, (tuple, list)):
        if len(dims) != len(out):
            raise ValueError(
                f"{defn.name}: the vmap rule returned out_dims {dims!r} with {len(dims)} entries for "
                f"{where} with {len(out)} entries; give one out_dim per output (or one int for all)"
            )
        flat: list[Any] = []
        for i, (o, d) in enumerate(zip(out, dims)):
            flat.extend(_flat_dims(defn, o, d, f"{where}[{i}]"))
        return flat
    raise ValueError(
        f"{defn.name}: the vmap rule returned out_dims {dims!r} that does not match {where} "
        f"({type(out).__name__}); out_dims must be an int, None, or a tuple/list shaped like the output"
    )


def _normalize_rule_output(defn: OpDefinition, result: Any, batch_size: int) -> tuple[Any, Any]:
    """``(out, out_dims)`` from the user's rule -> ``(out, out_batched)`` for ``custom_vmap``."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise ValueError(
            f"{defn.name}: a vmap rule must return a pair (output, out_dims), got {type(result).__name__}"
        )
    out, dims = result
    leaves, tree = jax.tree_util.tree_flatten(out)
    flat_dims = _flat_dims(defn, out, dims, "the output")
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
                f"{defn.name}: the vmap rule says output leaf {i} is batched along dim {d}, but it "
                f"has only {x.ndim} dims (shape {tuple(x.shape)})"
            )
        if x.shape[d] != batch_size:
            raise ValueError(
                f"{defn.name}: the vmap rule returned output leaf {i} with {x.shape[d]} entries along "
                f"its batch dim {d} (shape {tuple(x.shape)}), but vmap runs with batch size {batch_size}"
            )
        fixed.append(jnp.moveaxis(x, d, 0))
        batched.append(True)
    return (
        jax.tree_util.tree_unflatten(tree, fixed),
        jax.tree_util.tree_unflatten(tree, batched),
    )


def stage(defn: OpDefinition, inner: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """``inner`` under a ``custom_vmap`` whose batching rule is the op's rule.

    Without ``vmap`` it is just ``inner``; a JVP through ``inner`` keeps it
    differentiable (a bare ``custom_vmap`` does not linearize).  A host op with
    neither a rule nor a ``vmap_method`` is batched by calling its kernel once per
    example; the first time that happens for a batch of at least
    :data:`PER_EXAMPLE_WARNING_MIN_BATCH` examples it warns (once per op definition),
    naming ``register_vmap`` and ``vmap_method``.

    >>> # run = vmap.stage(defn, sharding.stage(defn, kernels.stage(defn, run_kernel)))
    """
    rule = defn.vmap_rule
    if rule is None:
        if defn.kernels.any_host and defn.vmap_method is None:
            return _batched(defn, inner, _per_example_rule(defn))
        return inner
    return _batched(defn, inner, _user_rule(defn, rule))


#: A host op batched per example warns from this many examples on (fewer calls are no cliff).
PER_EXAMPLE_WARNING_MIN_BATCH = 16

Batching = Callable[[Any, Callable[..., Any], int, Any, tuple[Any, ...]], tuple[Any, Any]]


def _user_rule(defn: OpDefinition, rule: Callable[..., Any]) -> Batching:
    def batch(args: Any, plain: Callable[..., Any], axis_size: int, in_batched: Any, flat: tuple[Any, ...]) -> tuple[Any, Any]:
        vals = args.rebuild(flat)
        in_dims = _in_dims(defn, vals, args.idx, args.unflatten(in_batched))
        pos, kw = defn.binder.split_call(vals)
        return _normalize_rule_output(defn, rule(VmapInfo(axis_size), in_dims, *pos, **kw), axis_size)

    return batch


def _per_example_rule(defn: OpDefinition) -> Batching:
    def batch(args: Any, plain: Callable[..., Any], axis_size: int, in_batched: Any, flat: tuple[Any, ...]) -> tuple[Any, Any]:
        if axis_size >= PER_EXAMPLE_WARNING_MIN_BATCH and not defn.cache.get("vmap_warned"):
            defn.cache["vmap_warned"] = True
            warnings.warn(
                f"{defn.name}: vmap of this host op calls its kernel once per example ({axis_size} "
                "host calls here), because it has no batching rule. Register one with "
                f"@{defn.opname}.register_vmap (a NumPy kernel can usually take the whole batch), "
                "or declare how the kernel batches with custom_op(..., vmap_method='expand_dims' "
                "or 'broadcast_all')",
                UserWarning,
                stacklevel=2,
            )
        out = jax.vmap(plain, in_axes=[0 if b else None for b in in_batched])(*flat)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return batch


def _batched(defn: OpDefinition, inner: Callable[[list[Any]], Any], batch: Batching) -> Callable[[list[Any]], Any]:
    def run(values: list[Any]) -> Any:
        args = defn.leaves(values)
        if not args.leaves:
            return inner(values)

        def plain(*flat: Any) -> Any:
            return inner(args.rebuild(flat))

        batchable = jax.custom_batching.custom_vmap(plain)

        def batching_rule(axis_size: int, in_batched: Any, *flat: Any) -> tuple[Any, Any]:
            return batch(args, plain, int(axis_size), in_batched, flat)

        # jaxprs print the rule by name: rule=<function mylib::op vmap rule at ...>
        batching_rule.__name__ = batching_rule.__qualname__ = f"{defn.name} vmap rule"
        batchable.def_vmap(batching_rule)

        @jax.custom_jvp
        def call(*flat: Any) -> Any:
            return batchable(*flat)

        @call.defjvp
        def _jvp(primals: Any, tangents: Any) -> Any:
            return jax.jvp(plain, primals, tangents)

        return call(*args.leaves)

    return run


__all__ = ["stage"]
