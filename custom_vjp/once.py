"""``once_differentiable``: a backward that may be differentiated only once.

PyTorch raises "trying to differentiate twice" when a graph built by such a
backward is differentiated again.  Here a guard (an identity ``custom_jvp`` whose
derivative raises) sits on everything the backward reads and on its result, so
any derivative through the backward fails with that message as soon as JAX
traces it, before JAX tries to differentiate the body itself (which may not be
differentiable at all: ``jax.pure_callback``, NumPy)::

    >>> import jax, jax.numpy as jnp
    >>> @once_differentiable
    ... def backward(ctx, g):
    ...     return 2 * g
    >>> float(backward(None, jnp.ones(())))
    2.0
    >>> try:
    ...     jax.jvp(lambda g: backward(None, g), (1.0,), (1.0,))
    ... except RuntimeError as e:
    ...     print(e)
    trying to differentiate twice a function that was marked with @once_differentiable
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from custom_vjp.ctx import FunctionCtx, wrap_saved
from custom_vjp.trees import is_array, is_float, is_none_or_array

__all__ = ["ONCE_MSG", "guard_tree", "is_once_differentiable", "once_differentiable", "unwrap_once"]

ONCE_MSG = "trying to differentiate twice a function that was marked with @once_differentiable"
_INNER = "_cvjp_once_inner"


@functools.cache
def _guard() -> Callable[[Any], Any]:
    @jax.custom_jvp
    def guard(x: Any) -> Any:
        return x

    @guard.defjvp
    def _guard_jvp(primals: Any, tangents: Any) -> Any:
        raise RuntimeError(ONCE_MSG)

    return guard


def guard_tree(tree: Any) -> Any:
    """``tree`` with every float array behind the guard (raising when differentiated)."""
    guard = _guard()
    return jax.tree_util.tree_map(
        lambda g: guard(g) if is_array(g) and is_float(jnp.result_type(g)) else g,
        tree,
        is_leaf=is_none_or_array,
    )


def once_differentiable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a ``backward`` as not differentiable itself (PyTorch's decorator).

    First-order gradients work (also under ``jit`` and ``vmap``, and for a backward
    that calls ``jax.pure_callback``); differentiating through the backward
    (``grad(grad)``, ``jax.hessian``) raises ``RuntimeError`` "trying to differentiate
    twice" when that path is traced.  Forward mode derived from the backward (its
    transpose) still works.

    >>> @once_differentiable
    ... def backward(ctx, g):
    ...     return 2 * g
    >>> is_once_differentiable(backward)
    True
    """

    @functools.wraps(fn)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        if isinstance(ctx, FunctionCtx):
            wrap_saved(ctx, guard_tree)
        return guard_tree(fn(ctx, *guard_tree(grads)))

    setattr(wrapper, _INNER, fn)
    return wrapper


def is_once_differentiable(fn: Callable[..., Any]) -> bool:
    """Was ``fn`` decorated with :func:`once_differentiable`."""
    return hasattr(fn, _INNER)


def unwrap_once(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The backward without its guard (used to transpose it into a forward-mode rule)."""
    return getattr(fn, _INNER, fn)
