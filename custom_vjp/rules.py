"""The interface other packages (``jaxops``) build on: documented, stable within the project.

``jaxops`` turns an op's registered formula into a :class:`~custom_vjp.Function`
and gives host ops a zero derivative that applies the autograd fallback mode.
Everything it needs from this package is named here; nothing else of
``custom_vjp`` is imported from outside it.

- :func:`make_function` builds a ``Function`` subclass from plain callables and a
  display name (used in error messages).
- :func:`linear_call` binds the linear primitive that ``Function`` emits as its
  tangent: evaluated by ``rule.forward`` (forward mode), transposed by
  ``rule.backward`` (reverse mode); :class:`LinRule` holds the two and the avals.
- :func:`lin_aval`, :func:`zeros_of`, :func:`vma_of`, :func:`vary_to` keep
  ``shard_map``'s varying mesh axes on avals, zeros and values.
- :class:`VmapInfo` is what vmap rules receive (``info.batch_size``).

>>> import jax, jax.numpy as jnp
>>> Twice = make_function("demo::twice", forward=lambda x: 2 * x,
...                       setup_context=lambda ctx, inputs, output: None,
...                       backward=lambda ctx, g: 2 * g)
>>> float(jax.grad(Twice.apply)(jnp.ones(())))
2.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from custom_vjp._lin import LinRule, function_lin_p, lin_aval, vary_to, vma_of, zeros_of
from custom_vjp.call import VmapInfo
from custom_vjp.function import Function


def make_function(
    name: str,
    *,
    forward: Callable[..., Any],
    setup_context: Callable[..., Any],
    backward: Callable[..., Any],
    forward_ad_fix: str | None = None,
) -> type[Function]:
    """A :class:`Function` subclass from plain callables; ``name`` appears in its messages.

    ``forward_ad_fix`` replaces the advice of the forward-mode error for a host-only
    backward (a Function made this way has no ``jvp`` staticmethod a user could add).
    """
    return type(
        name.replace("::", "_").replace(".", "_"),
        (Function,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "_custom_vjp_name": name,
            "_custom_vjp_forward_ad_fix": forward_ad_fix,
        },
    )


def linear_call(tangents: Sequence[Any], rule: LinRule) -> list[Any]:
    """Bind the linear primitive on ``tangents`` (no residuals) with ``rule``."""
    return function_lin_p.bind(*tangents, num_res=0, rule=rule)


def set_static(ctx: Any, name: str, value: Any) -> None:
    """Attach a hashable static ``value`` to ``ctx`` that travels to ``backward`` as aux data."""
    object.__setattr__(ctx, name, value)


__all__ = [
    "LinRule",
    "VmapInfo",
    "lin_aval",
    "linear_call",
    "make_function",
    "set_static",
    "vary_to",
    "vma_of",
    "zeros_of",
]
