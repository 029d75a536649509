"""``host``: NumPy code inside a Function, eagerly and under ``jit`` / ``vmap``.

A literal port of a PyTorch Function whose ``forward`` or ``backward`` calls NumPy
works eagerly but fails under ``jit`` or ``vmap`` (NumPy cannot read a tracer).
Wrapping the NumPy function with :func:`host` fixes that in one line: on concrete
arrays it is called directly; under a transform it runs through
``jax.pure_callback`` with the declared output shapes::

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from custom_vjp import Function
    >>> class NumpySin(Function):
    ...     @staticmethod
    ...     @host(out_shapes=lambda x: x)          # the only new line
    ...     def forward(x):
    ...         return np.sin(x)
    ...     @staticmethod
    ...     def setup_context(ctx, inputs, output):
    ...         ctx.save_for_backward(inputs[0])
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return g * jnp.cos(x)
    >>> float(jax.jit(jax.grad(NumpySin.apply))(jnp.zeros(())))
    1.0

A host function is not differentiable by JAX: differentiate it through a
Function's ``backward`` (which may itself use :func:`host`; forward mode then
needs a ``jvp`` staticmethod).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core

from custom_vjp.trees import is_array, is_none_or_array

__all__ = ["host"]

_VMAP_METHODS = ("sequential", "sequential_unrolled", "expand_dims", "broadcast_all")


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _abstract(x: Any) -> Any:
    return jax.ShapeDtypeStruct(np.shape(x), jax.dtypes.canonicalize_dtype(x.dtype)) if is_array(x) else x


def _declared(name: str, out_shapes: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The output ``ShapeDtypeStruct`` pytree for these arguments."""
    if out_shapes is None:
        first = next(
            (x for x in jax.tree_util.tree_leaves((args, kwargs), is_leaf=is_none_or_array) if is_array(x)),
            None,
        )
        if first is None:
            raise TypeError(f"custom_vjp.host({name}): out_shapes is required when no argument is an array")
        shapes: Any = _abstract(first)
    elif callable(out_shapes):
        a_args, a_kwargs = jax.tree_util.tree_map(_abstract, (args, kwargs), is_leaf=is_none_or_array)
        shapes = out_shapes(*a_args, **a_kwargs)
    else:
        shapes = out_shapes

    def to_sds(s: Any) -> jax.ShapeDtypeStruct:
        if not hasattr(s, "shape") or not hasattr(s, "dtype"):
            raise TypeError(
                f"custom_vjp.host({name}): out_shapes must give jax.ShapeDtypeStruct (or arrays) "
                f"for every output, got {type(s).__name__}"
            )
        return jax.ShapeDtypeStruct(tuple(s.shape), jax.dtypes.canonicalize_dtype(s.dtype))

    return jax.tree_util.tree_map(to_sds, shapes)


def _conform(name: str, out: Any, sds: Any, batched: bool = False) -> list[np.ndarray]:
    """``fn``'s result as NumPy arrays of exactly the declared shapes and dtypes (flat).

    ``batched``: ``fn`` was called on a batch (``vmap_method="expand_dims"`` and
    friends), so outputs may carry extra leading batch dimensions.
    """
    want, want_tree = jax.tree_util.tree_flatten(sds)
    got, got_tree = jax.tree_util.tree_flatten(out)
    if got_tree != want_tree:
        raise ValueError(
            f"custom_vjp.host({name}): the function returned {got_tree} but out_shapes declares "
            f"{want_tree}"
        )
    flat = []
    for k, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g)
        lead = g.ndim - len(w.shape)
        if g.shape != w.shape and not (batched and lead > 0 and g.shape[lead:] == w.shape):
            raise ValueError(
                f"custom_vjp.host({name}): output {k} has shape {list(g.shape)} but out_shapes "
                f"declares {list(w.shape)}"
            )
        flat.append(g.astype(w.dtype, copy=False))
    return flat


def host(
    fn: Callable[..., Any] | None = None,
    out_shapes: Any = None,
    *,
    vmap_method: str = "sequential",
) -> Any:
    """Make a NumPy function callable on JAX arrays, eagerly and under any transform.

    ``out_shapes`` declares the output: a pytree of ``jax.ShapeDtypeStruct`` (or arrays),
    or a callable taking the arguments with every array replaced by its
    ``ShapeDtypeStruct`` (other arguments as they are) and returning one; ``None``
    means "like the first array argument".  Array arguments (also inside pytrees)
    reach ``fn`` as NumPy arrays, other arguments unchanged; the result is converted
    to the declared dtypes and must have the declared shapes (``ValueError`` naming
    ``fn`` otherwise).  ``vmap_method`` is ``jax.pure_callback``'s (``"sequential"``
    calls ``fn`` once per example; ``"expand_dims"`` / ``"broadcast_all"`` once with a
    batch axis, for NumPy code that broadcasts).  Usable as a decorator:
    ``@host(out_shapes=...)``.

    >>> import jax.numpy as jnp, numpy as np
    >>> cumsum = host(np.cumsum, lambda x: x)
    >>> jax.jit(cumsum)(jnp.arange(3.0)).tolist()
    [0.0, 1.0, 3.0]
    """
    if vmap_method not in _VMAP_METHODS:
        raise ValueError(f"custom_vjp.host: vmap_method must be one of {_VMAP_METHODS}, got {vmap_method!r}")
    if fn is None:
        return functools.partial(host, out_shapes=out_shapes, vmap_method=vmap_method)
    if not callable(fn):
        raise TypeError(f"custom_vjp.host: expected a callable, got {type(fn).__name__}")
    name = _name(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sds = _declared(name, out_shapes, args, kwargs)
        flat_sds, out_tree = jax.tree_util.tree_flatten(sds)
        leaves, tree = jax.tree_util.tree_flatten((args, kwargs), is_leaf=is_none_or_array)
        arrays = [x for x in leaves if is_array(x)]
        in_ndims = [np.ndim(x) for x in arrays]
        mask = [is_array(x) for x in leaves]
        static = [None if m else x for x, m in zip(leaves, mask)]  # no tracer kept alive

        def call(*values: Any) -> list[np.ndarray]:
            it = iter(values)
            full = [np.asarray(next(it)) if m else x for x, m in zip(static, mask)]
            a, k = jax.tree_util.tree_unflatten(tree, full)
            batched = any(np.ndim(v) > n for v, n in zip(values, in_ndims))
            return _conform(name, fn(*a, **k), sds, batched)

        if not any(isinstance(x, core.Tracer) for x in arrays):
            return jax.tree_util.tree_unflatten(out_tree, [jnp.asarray(x) for x in call(*arrays)])

        @jax.custom_jvp
        def run(*values: Any) -> Any:
            return jax.pure_callback(call, flat_sds, *values, vmap_method=vmap_method)

        @run.defjvp
        def _no_derivative(primals: Any, tangents: Any) -> Any:
            raise RuntimeError(
                f"custom_vjp.host({name}) cannot be differentiated by JAX: it runs NumPy on the "
                "host. Call it from a custom_vjp.Function whose backward (and jvp, for forward "
                "mode) gives its derivative; a backward that itself uses host can be "
                "differentiated only once."
            )

        return jax.tree_util.tree_unflatten(out_tree, list(run(*arrays)))

    return wrapper
