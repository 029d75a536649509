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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core as _core
from jax._src.state.discharge import discharge_state

from jaxops import dispatch, fake, host
from jaxops.definition import OpDefinition

_Ref: Any = getattr(jax, "Ref", None)
_ALIAS_ADVICE = "mutated arguments are returned for you: return a copy, e.g. x.copy(), or None"


def _is_ref(x: Any) -> bool:
    return _Ref is not None and isinstance(x, _Ref)


def _map_leaves(fn: Callable[[Any], Any], v: Any) -> Any:
    """``fn`` on each array of a parameter value (array, None, or list with None holes)."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return [None if e is None else fn(e) for e in v]
    return fn(v)


def _assemble(defn: OpDefinition, out: Any, new_values: list[Any]) -> Any:
    """Apply the return convention: ``new`` or ``(out, new)``."""
    new = new_values[0] if len(new_values) == 1 else tuple(new_values)
    if not defn.function_schema.returns:
        return new
    return (out, new)


def _new_values_of(defn: OpDefinition, result: Any) -> list[Any]:
    """The per-mutated-argument new values inside an op's (functionalized) result."""
    new = result[1] if defn.function_schema.returns else result
    return [new] if len(defn.mutated_idx) == 1 else list(new)


# ----------------------------------------------------------------- eager stage
def eager_stage(defn: OpDefinition, inner: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """Wrap the eager call of a mutating op: ``jax.Ref`` arguments are read, then written back.

    >>> # call = mutation.eager_stage(defn, pure_call); new_x = call(values)
    """

    def call(values: list[Any]) -> Any:
        vals = list(values)
        refs: list[tuple[int, Any]] = []
        for i, p in enumerate(defn.binder.params):
            v = vals[i]
            if not p.is_array or v is None:
                continue
            if p.kind == "tensor_list":
                if any(_is_ref(e) for e in v):
                    if i in defn.mutated_idx:
                        refs.append((i, list(v)))
                    vals[i] = [e[...] if _is_ref(e) else e for e in v]
            elif _is_ref(v):
                if i in defn.mutated_idx:
                    refs.append((i, v))
                vals[i] = v[...]
        out = inner(vals)
        if refs:
            new = dict(zip(defn.mutated_idx, _new_values_of(defn, out)))
            for i, target in refs:
                if isinstance(target, list):
                    for e, n in zip(target, new[i]):
                        if _is_ref(e):
                            e[...] = n
                else:
                    target[...] = new[i]
        return out

    return call


# ------------------------------------------------------------------------ host
def _host_inputs(defn: OpDefinition, values: list[Any]) -> tuple[list[Any], list[Any]]:
    """NumPy arguments for a host kernel: writable copies (mutated) and read-only views."""
    np_values: list[Any] = []
    copies: list[Any] = []
    for i, (p, v) in enumerate(zip(defn.binder.params, values)):
        if not p.is_array:
            np_values.append(v)
        elif i in defn.mutated_idx:
            c = _map_leaves(lambda a: np.array(a, copy=True), v)
            copies.append(c)
            np_values.append(c)
        else:
            np_values.append(_map_leaves(host.readonly, v))
    return np_values, copies


def _run_host(defn: OpDefinition, kernel: Callable[..., Any], values: list[Any]) -> tuple[Any, list[Any]]:
    np_values, copies = _host_inputs(defn, values)
    pos, kw = defn.binder.split_call(np_values)
    out = defn.check_outputs(host.call_kernel_eager(defn.name, kernel, pos, kw), host=True)
    host.check_no_alias(defn.name, out, np_values, _ALIAS_ADVICE)
    return out, copies


def host_eager(defn: OpDefinition, kernel: dispatch.Kernel, values: list[Any], leaves: list[Any]) -> Any:
    """Eager call of a mutating host kernel on concrete arrays (no JAX tracing).

    >>> # new_x = mutation.host_eager(defn, defn.kernels.for_platform("cpu"), values, leaves)
    """
    out, copies = _run_host(defn, kernel.fn, values)
    device = dispatch.device_of_leaves(leaves)
    return _assemble(defn, host.place_outputs(out, device), [host.place_outputs(c, device) for c in copies])


def _host_traced(defn: OpDefinition, kernel: Any, values: list[Any]) -> Any:
    """A mutating host kernel under tracing: one ``pure_callback`` returning result + copy-outs."""
    declared = None
    if defn.function_schema.returns:
        declared, dynamic_sizes = fake.abstract_eval(defn, values)
        if dynamic_sizes:
            raise NotImplementedError(
                f"{defn.name}: a mutating op with data-dependent output sizes (new_dynamic_size) "
                "cannot be traced; call it eagerly"
            )
    copy_shapes = [
        _map_leaves(lambda a: jax.ShapeDtypeStruct(tuple(a.shape), a.dtype), values[i]) for i in defn.mutated_idx
    ]
    args = defn.leaves(values)

    def body(*np_flat: Any) -> Any:
        return _run_host(defn, kernel.fn, args.rebuild(np_flat))

    out, new = host.pure_callback(defn.name, body, (declared, copy_shapes), args.leaves, defn.vmap_method)
    return _assemble(defn, out, list(new))


# ------------------------------------------------------------------- traceable
def _traceable(defn: OpDefinition, kernel: Any, values: list[Any]) -> Any:
    """A traceable kernel with ``jax.Ref`` s for the mutated arguments, discharged to pure code."""
    mut = defn.mutated_idx
    args = defn.leaves(values)
    flat = args.leaves
    out_tree: list[Any] = []

    def stateful(*arrays: Any) -> list[Any]:
        vals = args.rebuild(arrays, lambda i, a: _map_leaves(jax.new_ref, a) if i in mut else a)
        out = defn.check_outputs(defn.call_kernel(kernel.fn, vals))
        inputs = [*arrays, *(r for i in mut for r in jax.tree_util.tree_leaves(vals[i]))]
        for o in jax.tree_util.tree_leaves(out):
            if any(o is x for x in inputs):
                raise RuntimeError(
                    f"{defn.name}: an output of the kernel is one of its inputs; outputs may not alias "
                    "inputs (mutated arguments are returned for you: return a new array, or None)"
                )
        new = [_map_leaves(lambda r: r[...], vals[i]) for i in mut]
        leaves, tree = jax.tree_util.tree_flatten((out, new))
        out_tree.append(tree)
        return [jnp.asarray(x) for x in leaves]

    closed = jax.make_jaxpr(stateful)(*flat)
    pure = discharge_state(closed)
    leaves = _core.eval_jaxpr(pure.jaxpr, pure.consts, *flat)
    out, new = jax.tree_util.tree_unflatten(out_tree[-1], leaves[: out_tree[-1].num_leaves])
    return _assemble(defn, out, new)


def runner(defn: OpDefinition) -> Callable[[dispatch.Kernel, list[Any]], Any]:
    """The kernel runner of a mutating op under tracing (replaces ``kernels.runner``).

    It returns the functionalized result: the new values of the mutated
    arguments, or ``(result, new_values)``.

    >>> # run = kernels.stage(defn, mutation.runner(defn))
    """

    def run(kernel: dispatch.Kernel, values: list[Any]) -> Any:
        if kernel.host:
            return _host_traced(defn, kernel, values)
        return _traceable(defn, kernel, values)

    return run


__all__ = ["eager_stage", "host_eager", "runner"]
