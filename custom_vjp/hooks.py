"""Gradient hooks: PyTorch's ``tensor.register_hook`` as a function.

>>> import jax, jax.numpy as jnp
>>> from custom_vjp import grad_hook
>>> def loss(x):
...     y = grad_hook(x, lambda g: g * 10.0)   # identity forward, scaled cotangent
...     return jnp.sum(y ** 2)
>>> jax.grad(loss)(jnp.array([1.0, 2.0]))
Array([20., 40.], dtype=float32)

The hook ``fn`` receives the cotangent flowing into ``x`` and returns the
cotangent to propagate (or ``None`` to keep it).  It is a JAX function of the
cotangent: it runs when the backward pass is *traced* (once per trace under
``jit``), so use ``jax.debug.print`` / ``jax.debug.callback`` for run-time side
effects such as logging gradient norms.  It may close over arrays, including
traced ones (under ``jit``, ``scan`` and ``jax.checkpoint``): ``fn`` is
closure-converted when ``grad_hook`` is called, so its captured arrays travel
as explicit inputs.  Those captured values receive no gradient through the
hook (in PyTorch too, a hook's arithmetic is not recorded).

Like PyTorch's hooks, ``fn`` is not called when no gradient flows to ``x``
(an unused output).  Forward mode (``jax.jvp`` / ``jax.jacfwd``) is not
supported through a ``grad_hook``: JAX rejects forward-mode differentiation
of a custom VJP (a ``TypeError``), because a non-linear hook has no tangent rule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

__all__ = ["grad_hook"]


def _hook_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _apply(name: str, converted: Callable[..., Any], g: jax.Array, consts: tuple) -> jax.Array:
    out = converted(g, *consts)
    if out is None:
        return g
    out = jnp.asarray(out)
    if out.shape != g.shape:
        raise ValueError(
            f"grad_hook: hook {name!r} returned a gradient of shape {out.shape}, "
            f"expected shape {g.shape}"
        )
    if out.dtype != g.dtype:
        raise TypeError(
            f"grad_hook: hook {name!r} has changed the type of value "
            f"(was {g.dtype} got {out.dtype})"
        )
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _hooked(name: str, converted: Callable[..., Any], x: jax.Array, *consts: Any) -> jax.Array:
    return x


def _hooked_fwd(
    name: str, converted: Callable[..., Any], x: Any, *consts: Any
) -> tuple[jax.Array, tuple]:
    return x.value, tuple(c.value for c in consts)


def _hooked_bwd(
    name: str, converted: Callable[..., Any], consts: tuple, g: Any
) -> tuple[Any, ...]:
    no_grads = (None,) * len(consts)
    if isinstance(g, SymbolicZero):
        return (None, *no_grads)
    return (_apply(name, converted, g, consts), *no_grads)


_hooked.defvjp(_hooked_fwd, _hooked_bwd, symbolic_zeros=True)


def _hook_leaf(x: Any, fn: Callable[[jax.Array], jax.Array | None]) -> Any:
    if not (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)):
        return x  # integer / boolean / non-array leaves carry no gradient
    converted, consts = jax.closure_convert(fn, jnp.zeros_like(x))
    return _hooked(_hook_name(fn), converted, x, *consts)


def grad_hook(x: Any, fn: Callable[[jax.Array], jax.Array | None]) -> Any:
    """Return ``x`` unchanged; in the backward pass replace its cotangent ``g`` by ``fn(g)``.

    ``x`` may be an array or a pytree of arrays; ``fn`` is then applied to each
    floating leaf's cotangent separately (as a PyTorch hook on each tensor).
    ``fn`` returning ``None`` keeps ``g``.  A result of another shape raises
    ``ValueError``, of another dtype ``TypeError`` (as PyTorch does).

    >>> import jax, jax.numpy as jnp
    >>> clip = lambda g: jnp.clip(g, -1.0, 1.0)
    >>> jax.jit(jax.grad(lambda x: jnp.sum(3.0 * grad_hook(x, clip))))(jnp.ones(2))
    Array([1., 1.], dtype=float32)
    >>> jax.grad(lambda p: p["w"] * grad_hook(p, lambda g: 2 * g)["b"])(
    ...     {"w": 1.0, "b": 3.0})
    {'b': Array(2., dtype=float32, weak_type=True), 'w': Array(3., dtype=float32, weak_type=True)}
    """
    if not callable(fn):
        raise TypeError(f"grad_hook: fn must be callable, got {type(fn).__name__}")
    return jax.tree.map(lambda leaf: _hook_leaf(leaf, fn), x)
