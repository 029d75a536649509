"""Activation checkpointing: PyTorch's ``torch.utils.checkpoint`` as a function transform.

>>> import jax, jax.numpy as jnp
>>> from custom_vjp import checkpoint
>>> block = checkpoint(lambda x: jnp.sin(jnp.sin(x)))       # recompute in backward
>>> jax.grad(lambda x: block(x).sum())(jnp.zeros(2))
Array([1., 1.], dtype=float32)

``checkpoint(fn)`` is ``jax.checkpoint(fn)`` (also known as ``jax.remat``):
only the inputs of ``fn`` are kept for the backward pass and ``fn``'s forward
is recomputed there.  ``policy`` picks what may be saved instead of recomputed:
``None`` / ``"nothing_saveable"`` (save nothing, PyTorch's behaviour),
``"everything_saveable"``, ``"dots_saveable"``,
``"dots_with_no_batch_dims_saveable"``, or any ``jax.checkpoint_policies``
policy (e.g. ``save_only_these_names(...)`` or
``offload_dot_with_no_batch_dims("device", "pinned_host")`` to offload saved
matmul results to host memory).

Functions (``custom_vjp.Function``) and ``grad_hook`` inside a checkpointed
``fn`` work: their ``forward`` runs again during the backward pass and their
``backward`` sees the recomputed residuals.  ``saved_tensors_hooks`` apply to a
Function's residuals, so inside a checkpointed block they run when those
residuals are (re)computed; ``jax.checkpoint`` itself decides what of the
surrounding JAX code is saved, so use a ``policy`` to control that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

__all__ = ["POLICY_NAMES", "checkpoint"]

#: Policy names accepted as strings, mapped to ``jax.checkpoint_policies`` members.
POLICY_NAMES: tuple[str, ...] = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)


def _resolve_policy(policy: str | Callable[..., bool] | None) -> Callable[..., bool] | None:
    """Turn ``policy`` into what ``jax.checkpoint`` takes.

    >>> _resolve_policy("dots_saveable") is jax.checkpoint_policies.dots_saveable
    True
    >>> _resolve_policy("no_such_policy")
    Traceback (most recent call last):
        ...
    ValueError: checkpoint: unknown policy 'no_such_policy'; valid policy names are: nothing_saveable, everything_saveable, dots_saveable, dots_with_no_batch_dims_saveable (or pass a jax.checkpoint_policies policy)
    """
    if policy is None:
        return None
    if isinstance(policy, str):
        if policy not in POLICY_NAMES:
            raise ValueError(
                f"checkpoint: unknown policy {policy!r}; valid policy names are: "
                f"{', '.join(POLICY_NAMES)} (or pass a jax.checkpoint_policies policy)"
            )
        return getattr(jax.checkpoint_policies, policy)
    if callable(policy):
        return policy
    raise TypeError(
        "checkpoint: policy must be None, a policy name string or a "
        f"jax.checkpoint_policies policy, got {type(policy).__name__}"
    )


def checkpoint(
    fn: Callable[..., Any] | None = None,
    *,
    policy: str | Callable[..., bool] | None = None,
    prevent_cse: bool = True,
    static_argnums: int | Sequence[int] = (),
) -> Any:
    """Return ``fn`` wrapped so that its activations are recomputed in the backward pass.

    Usable directly or as a decorator, with or without arguments:

    >>> import jax, jax.numpy as jnp
    >>> @checkpoint(policy="dots_saveable")
    ... def mlp(w, x):
    ...     return jnp.tanh(w @ x)
    >>> jax.grad(lambda w: mlp(w, jnp.ones(2)).sum())(jnp.eye(2)).shape
    (2, 2)

    ``static_argnums`` and ``prevent_cse`` are passed on to ``jax.checkpoint``.
    A bad policy name raises ``ValueError`` listing the valid names.
    """
    resolved = _resolve_policy(policy)
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    static = tuple(static_argnums)

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise TypeError(f"checkpoint: fn must be callable, got {type(f).__name__}")
        return jax.checkpoint(f, prevent_cse=prevent_cse, policy=resolved, static_argnums=static)

    if fn is None:
        return wrap
    return wrap(fn)
