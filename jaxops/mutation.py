"""Functionalization of ``mutates_args``: in-place kernels, pure ops.

A kernel of an op declared with ``mutates_args={"out"}`` writes into ``out``:

* a host kernel gets a *writable NumPy copy* of every mutated argument (and
  read-only views of the other arrays, so writing to one of those raises);
* a traceable kernel gets a :class:`jax.Ref` for every mutated argument
  (``out[...] = v``) and plain arrays for the rest.

Callers never see an input change.  They receive the new values instead:

* declared return ``None`` (schema ``-> ()``): the new value of the mutated
  argument, or a tuple of them in signature order when several are mutated;
* declared return ``T``: ``(result, new_values)``, ``new_values`` as above.

Each new value keeps the structure of its argument: an array, ``None`` for an
``Optional`` argument passed as ``None``, a list (with ``None`` holes) for a
``Tensor?[]`` argument.  A caller that passes a :class:`jax.Ref` for a mutated
argument also has the ref updated in place (eagerly and under ``jit``).
Outputs may not alias inputs (``RuntimeError`` "may not alias"): host
kernels are checked with :func:`numpy.shares_memory`, traceable ones by identity.

Under tracing the traceable kernel's refs are *discharged* (the stateful
jaxpr is turned into a pure one before it reaches the surrounding
computation), so mutating ops work under ``jit``, ``grad``, ``vmap``,
``jax.checkpoint`` and ``lax.scan`` alike; host kernels run through
``jax.pure_callback``.  The copy-outs have the inputs' shapes, so a host op
whose declared return is ``None`` needs no fake; when it returns more, its
fake describes the declared return only (not the copy-outs).

>>> import jax, jax.numpy as jnp, numpy as np, jaxops
>>> @jaxops.custom_op("mutdoc::add_", mutates_args={"x"}, host=True)
... def add_(x: jax.Array, y: jax.Array) -> None:
...     x += y                                  # a writable copy of x
>>> x = jnp.zeros(3)
>>> add_(x, jnp.ones(3)).tolist(), x.tolist()   # x is unchanged
([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
>>> r = jax.new_ref(jnp.zeros(3))
>>> _ = add_(r, jnp.ones(3)); r[...].tolist()  # a Ref is updated in place
[1.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core as _core
from jax._src.state.discharge import discharge_state

from jaxops import host as _host
from jaxops import profiles
from jaxops.op import ArrayLeaves

if TYPE_CHECKING:
    from jaxops.op import CustomOp

_Ref: Any = getattr(jax, "Ref", None)


def _is_ref(x: Any) -> bool:
    return _Ref is not None and isinstance(x, _Ref)


def _mutated_indices(op: CustomOp) -> list[int]:
    return [i for i, p in enumerate(op._binder.params) if p.name in op._mutated]


def _map_leaves(fn: Callable[[Any], Any], v: Any) -> Any:
    """``fn`` on each array of a parameter value (array, None, or list with None holes)."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return [None if e is None else fn(e) for e in v]
    return fn(v)


def _assemble(op: CustomOp, out: Any, new_values: list[Any]) -> Any:
    """Apply the return convention: ``new`` or ``(out, new)``."""
    new = new_values[0] if len(new_values) == 1 else tuple(new_values)
    if not op._fs.returns:
        return new
    return (out, new)


def _new_values_of(op: CustomOp, result: Any) -> list[Any]:
    """The per-mutated-argument new values inside an op's (functionalized) result."""
    new = result[1] if op._fs.returns else result
    return [new] if len(_mutated_indices(op)) == 1 else list(new)


# --------------------------------------------------------------------- calling
def call(op: CustomOp, values: list[Any]) -> Any:
    """Call a mutating op with bound ``values``; write back into any ``jax.Ref`` arguments.

    Used by ``CustomOp`` for every call of an op that mutates arguments.

    >>> # out = mutation.call(op, op._binder.bind(args, kwargs))
    """
    params = op._binder.params
    vals = list(values)
    refs: list[tuple[int, Any]] = []
    for i, p in enumerate(params):
        v = vals[i]
        if not p.is_array or v is None:
            continue
        if p.kind == "tensor_list":
            if any(_is_ref(e) for e in v):
                if p.name in op._mutated:
                    refs.append((i, list(v)))
                vals[i] = [e[...] if _is_ref(e) else e for e in v]
        elif _is_ref(v):
            if p.name in op._mutated:
                refs.append((i, v))
            vals[i] = v[...]
    arrays, statics = op._split(vals)
    out = op._call(vals, arrays, statics)
    if profiles._RECORDING:
        profiles._record_call(op, vals, out)
    if refs:
        new = dict(zip(_mutated_indices(op), _new_values_of(op, out)))
        for i, target in refs:
            if isinstance(target, list):
                for e, n in zip(target, new[i]):
                    if _is_ref(e):
                        e[...] = n
            else:
                target[...] = new[i]
    return out


# ------------------------------------------------------------------------ host
def _readonly(x: Any) -> Any:
    a = np.asarray(x)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _host_inputs(op: CustomOp, values: list[Any]) -> tuple[list[Any], list[Any]]:
    """NumPy arguments for a host kernel: writable copies (mutated) and read-only views."""
    np_values: list[Any] = []
    copies: list[Any] = []
    for p, v in zip(op._binder.params, values):
        if not p.is_array:
            np_values.append(v)
        elif p.name in op._mutated:
            c = _map_leaves(lambda a: np.array(a, copy=True), v)
            copies.append(c)
            np_values.append(c)
        else:
            np_values.append(_map_leaves(_readonly, v))
    return np_values, copies


def _check_host_alias(op: CustomOp, out: Any, np_values: list[Any]) -> None:
    ins = [a for a in jax.tree_util.tree_leaves(np_values) if isinstance(a, np.ndarray)]
    for o in jax.tree_util.tree_leaves(out):
        if isinstance(o, np.ndarray) and any(np.shares_memory(o, i) for i in ins):
            raise RuntimeError(
                f"{op.name}: an output of the kernel aliases an input; outputs may not alias inputs "
                "(mutated arguments are returned for you: return a copy, e.g. x.copy(), or None)"
            )


def _run_host(op: CustomOp, kernel: Callable[..., Any], values: list[Any]) -> tuple[Any, list[Any]]:
    np_values, copies = _host_inputs(op, values)
    pos, kw = op._binder.split_call(np_values)
    out = _host.call_kernel_eager(op.name, kernel, pos, kw)
    out = op.check_outputs(out)
    _check_host_alias(op, out, np_values)
    return out, copies


def call_host_eager(op: CustomOp, kernel: Any, values: list[Any]) -> Any:
    """Eager call of a mutating host kernel on concrete arrays (no JAX tracing).

    >>> # new_x = mutation.call_host_eager(op, op.kernels.for_platform("cpu"), values)
    """
    out, copies = _run_host(op, kernel.fn, values)
    device = None
    for v in jax.tree_util.tree_leaves(values):
        if isinstance(v, jax.Array):
            devs = list(v.devices())
            if len(devs) == 1:
                device = devs[0]
                break

    def leaf(v: Any) -> Any:
        if isinstance(v, (np.ndarray, np.generic)):
            return jax.device_put(v, device) if device is not None else jnp.asarray(v)
        return v

    out = jax.tree_util.tree_map(leaf, out)
    new = [_map_leaves(leaf, c) for c in copies]
    return _assemble(op, out, new)


def _host_traced(op: CustomOp, kernel: Any, values: list[Any]) -> Any:
    """A mutating host kernel under tracing: one ``pure_callback`` returning result + copy-outs."""
    if op._fs.returns:
        declared, dynamic = op.abstract_eval(values)
        if dynamic:
            raise NotImplementedError(
                f"{op.name}: a mutating op with data-dependent output sizes (new_dynamic_size) "
                "cannot be traced; call it eagerly"
            )
    else:
        declared = None
    mut = _mutated_indices(op)
    copy_shapes = [
        _map_leaves(lambda a: jax.ShapeDtypeStruct(tuple(a.shape), a.dtype), values[i]) for i in mut
    ]
    result_shapes = (declared, copy_shapes)
    args = ArrayLeaves(op, values)

    def body(*np_flat: Any) -> Any:
        return _run_host(op, kernel.fn, args.rebuild(np_flat))

    method = op.vmap_method or "sequential"
    callback = _host.make_callback(op.name, body, result_shapes, vmap_method=method)
    out, new = _host.callback_results(
        jax.pure_callback(callback, result_shapes, *args.leaves, vmap_method=method), args.leaves
    )
    return _assemble(op, out, list(new))


# ------------------------------------------------------------------- traceable
def _traceable(op: CustomOp, kernel: Any, values: list[Any]) -> Any:
    """A traceable kernel with ``jax.Ref`` s for the mutated arguments, discharged to pure code."""
    mut = set(_mutated_indices(op))
    args = ArrayLeaves(op, values)
    flat = args.leaves
    out_tree: list[Any] = []

    def stateful(*arrays: Any) -> list[Any]:
        vals = args.rebuild(arrays, lambda i, a: _map_leaves(jax.new_ref, a) if i in mut else a)
        out = op.check_outputs(op.call_kernel(kernel.fn, vals))
        inputs = [*arrays, *(r for i in sorted(mut) for r in jax.tree_util.tree_leaves(vals[i]))]
        for o in jax.tree_util.tree_leaves(out):
            if any(o is x for x in inputs):
                raise RuntimeError(
                    f"{op.name}: an output of the kernel is one of its inputs; outputs may not alias "
                    "inputs (mutated arguments are returned for you: return a new array, or None)"
                )
        new = [_map_leaves(lambda r: r[...], vals[i]) for i in sorted(mut)]
        leaves, tree = jax.tree_util.tree_flatten((out, new))
        out_tree.append(tree)
        return [jnp.asarray(x) for x in leaves]

    closed = jax.make_jaxpr(stateful)(*flat)
    pure = discharge_state(closed)
    leaves = _core.eval_jaxpr(pure.jaxpr, pure.consts, *flat)
    out, new = jax.tree_util.tree_unflatten(out_tree[-1], leaves[: out_tree[-1].num_leaves])
    return _assemble(op, out, new)


def _run_plain(op: CustomOp, values: list[Any]) -> Any:
    args = ArrayLeaves(op, values)

    def run(kernel: Any, operands: tuple[Any, ...]) -> Any:
        vals = args.rebuild(operands)
        if kernel.host:
            return _host_traced(op, kernel, vals)
        return _traceable(op, kernel, vals)

    return op.kernels.select_traced(op.name, run, tuple(args.leaves))


def run_traced(op: CustomOp, values: list[Any]) -> Any:
    """A mutating op under tracing (called from ``run_kernels``): the functionalized result.

    With a vmap rule the rule batches the functionalized op (it returns what the op
    returns, e.g. the new value of the mutated argument, and its out_dims).

    >>> # new_x = mutation.run_traced(op, values)
    """
    if op._vmap_rule is not None:
        from jaxops import vmap

        return vmap.run_with_rule(op, values, _run_plain)
    return _run_plain(op, values)


__all__ = ["call", "call_host_eager", "run_traced"]
