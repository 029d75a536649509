"""Data-dependent output sizes: ``jaxops.get_ctx().new_dynamic_size()`` in fakes.

An op such as ``nonzero`` has an output whose size is only known once the op
has run.  Its fake says so by asking for a dynamic size::

    @nonzero.register_fake
    def _(x):
        n = jaxops.get_ctx().new_dynamic_size(min=0, max=x.size)
        return jax.ShapeDtypeStruct((n, x.ndim), jnp.int32)

What a caller sees then:

* **eager** calls (concrete arrays) run the host kernel directly and return the
  real shape; the fake is never run;
* under :func:`jax.eval_shape` and :func:`jaxops.plan` the size is a symbolic
  dimension (a :func:`jax.export.symbolic_shape` symbol named after the op,
  e.g. ``mylib_nonzero_0``; it shares the scope of any symbolic input dims so
  the two can mix, and carries ``min``/``max`` as constraints where it can);
* under :func:`jax.jit` (and so under ``grad``/``vmap`` of a non-eager call,
  which go through the op's jitted callable) the call raises ``RuntimeError``
  "data-dependent" naming the op and suggesting an eager call.  ``jit`` and
  ``eval_shape`` trace alike, so the error is raised when the computation is
  *lowered*: the op is bound as the primitive ``jaxops_data_dependent`` whose
  abstract evaluation gives the symbolic shapes and whose lowering raises;
* under ``jax.vmap`` it raises ``NotImplementedError`` (data-dependent ops
  cannot be batched), unless the op's vmap rule does something else;
* under :func:`jax.disable_jit` the primitive is evaluated eagerly and runs the
  kernel, so the real shape comes back.

A ``max == min`` size is not dynamic at all and comes back as that int.

>>> import jax, jax.numpy as jnp, numpy as np, jaxops
>>> @jaxops.custom_op("dyndoc::nonzero", mutates_args=(), host=True)
... def nonzero(x: jax.Array) -> jax.Array:
...     return np.stack(np.nonzero(x), axis=1).astype(np.int32)
>>> @nonzero.register_fake
... def _(x):
...     n = jaxops.get_ctx().new_dynamic_size()
...     return jax.ShapeDtypeStruct((n, x.ndim), jnp.int32)
>>> nonzero(jnp.array([0.0, 1.0, 2.0])).shape
(2, 1)
>>> jax.eval_shape(nonzero, jnp.zeros(3)).shape
(dyndoc_nonzero_0, 1)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax import export
from jax._src import core as _core
from jax.interpreters import batching, mlir

from jaxops import host as _host

if TYPE_CHECKING:
    from jaxops.definition import OpDefinition

# The symbolic scope used for the dynamic sizes of the fake being evaluated:
# a one-element list (filled by the first size when no input dim is symbolic).
_scope: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("jaxops_dynamic_scope", default=None)


def _symbolic_scope(tree: Any) -> Any:
    for leaf in jax.tree_util.tree_leaves(tree):
        for d in getattr(leaf, "shape", ()):
            scope = getattr(d, "scope", None)
            if scope is not None and not isinstance(d, (int, np.integer)):
                return scope
    return None


@contextlib.contextmanager
def symbolic_scope_of(abstract_inputs: Any) -> Iterator[None]:
    """Make the dynamic sizes of the fake evaluated inside share the inputs' symbolic scope.

    >>> with symbolic_scope_of([jax.ShapeDtypeStruct((3,), "float32")]):
    ...     pass
    """
    token = _scope.set([_symbolic_scope(abstract_inputs)])
    try:
        yield
    finally:
        _scope.reset(token)


def symbol_name(op_name: str, index: int) -> str:
    """The symbol of a dynamic size: ``"mylib::nonzero"``, 0 -> ``"mylib_nonzero_0"``.

    >>> symbol_name("mylib::nonzero.out", 1)
    'mylib_nonzero_out_1'
    """
    return f"{op_name.replace('::', '_').replace('.', '_')}_{index}"


def new_symbolic_size(op_name: str, index: int, min: int, max: int | None) -> Any:  # noqa: A002
    """A symbolic dimension for the ``index``-th dynamic size of ``op_name``'s fake.

    ``min``/``max`` become constraints of the symbol when it opens a new scope
    (JAX assumes every symbolic dim is at least 1 anyway).

    >>> new_symbolic_size("mylib::nonzero", 0, 0, None)
    mylib_nonzero_0
    >>> new_symbolic_size("mylib::pick", 0, 3, 3)
    3
    """
    for label, v in (("min", min), ("max", max)):
        if v is None and label == "max":
            continue
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{op_name}: new_dynamic_size({label}=...) must be an int, got {type(v).__name__}")
    if min < 0:
        raise ValueError(f"{op_name}: new_dynamic_size(min={min}): min must be greater than or equal to 0")
    if max is not None and max < min:
        raise ValueError(f"{op_name}: new_dynamic_size(min={min}, max={max}): max must be >= min")
    if max is not None and max == min:
        return int(min)
    name = symbol_name(op_name, index)
    holder = _scope.get()
    if holder is None:
        holder = [None]
    if holder[0] is None:
        constraints = []
        if min > 1:
            constraints.append(f"{name} >= {int(min)}")
        if max is not None and max >= 1:
            constraints.append(f"{name} <= {int(max)}")
        (dim,) = export.symbolic_shape(name, constraints=constraints)
        holder[0] = dim.scope
    else:
        (dim,) = export.symbolic_shape(name, scope=holder[0])
    return dim


# ------------------------------------------------------------- the primitive
class _Call:
    """Static data of one data-dependent call (hashable by identity)."""

    __slots__ = ("op", "kernel", "values", "array_idx", "treedef", "out_tree")

    def __init__(self, op: OpDefinition, kernel: Any, values: list[Any], array_idx: list[int], treedef: Any, out_tree: Any) -> None:
        self.op = op
        self.kernel = kernel
        self.values = [None if i in array_idx else v for i, v in enumerate(values)]
        self.array_idx = array_idx
        self.treedef = treedef
        self.out_tree = out_tree

    def __repr__(self) -> str:
        return self.op.name


def _message(name: str) -> str:
    return (
        f"{name}: the op's output size is data-dependent (its fake calls new_dynamic_size), so it "
        "is only known once the op has run and the op cannot be compiled under jax.jit "
        "(nor grad/vmap of it, which trace through jit). Call it eagerly, outside jit, on "
        "concrete arrays and pass its result into the jitted code; jax.eval_shape and "
        "jaxops.plan report the size as a symbolic dimension"
    )


data_dependent_p = _core.Primitive("jaxops_data_dependent")
data_dependent_p.multiple_results = True


def _abstract_eval(*avals: Any, call: _Call, out_avals: tuple[Any, ...]) -> list[Any]:
    del avals, call
    return list(out_avals)


def _impl(*operands: Any, call: _Call, out_avals: tuple[Any, ...]) -> list[Any]:
    arrs = jax.tree_util.tree_unflatten(call.treedef, [np.asarray(o) for o in operands])
    vals = list(call.values)
    for i, a in zip(call.array_idx, arrs):
        vals[i] = a
    pos, kw = call.op.binder.split_call(vals)
    out = call.op.check_outputs(_host.call_kernel_eager(call.op.name, call.kernel.fn, pos, kw), host=True)
    leaves, _ = _host.conform_outputs(call.op.name, out, list(out_avals))
    return [jax.numpy.asarray(a) for a in leaves]


def _lowering(ctx: Any, *args: Any, call: _Call, out_avals: tuple[Any, ...]) -> Any:
    raise RuntimeError(_message(call.op.name))


def _batching(args: Any, dims: Any, *, call: _Call, out_avals: tuple[Any, ...]) -> Any:
    raise NotImplementedError(
        f"{call.op.name}: the op's output size is data-dependent (new_dynamic_size), so it cannot be "
        "vmapped; call it eagerly per example (a Python loop)"
    )


data_dependent_p.def_abstract_eval(_abstract_eval)
data_dependent_p.def_impl(_impl)
mlir.register_lowering(data_dependent_p, _lowering)
batching.primitive_batchers[data_dependent_p] = _batching


def data_dependent_call(op: OpDefinition, kernel: Any, values: list[Any], out_shapes: Any) -> Any:
    """Bind a host kernel whose fake asked for dynamic sizes (under tracing).

    ``out_shapes`` are the fake's ShapeDtypeStructs (with symbolic dims); the
    result has them under ``eval_shape``, and lowering it (``jit``) raises.

    >>> # out = dynamic.data_dependent_call(op, kernel, values, out_shapes)
    """
    args = op.leaves(values)
    array_idx, flat, treedef = args.idx, args.leaves, args.treedef
    out_leaves, out_tree = jax.tree_util.tree_flatten(out_shapes)
    out_avals = tuple(_core.ShapedArray(tuple(s.shape), s.dtype) for s in out_leaves)
    call = _Call(op, kernel, values, array_idx, treedef, out_tree)
    outs = data_dependent_p.bind(*flat, call=call, out_avals=out_avals)
    return jax.tree_util.tree_unflatten(out_tree, list(outs))


__all__ = ["data_dependent_call", "data_dependent_p", "new_symbolic_size", "symbol_name", "symbolic_scope_of"]
