"""Saved-tensor hooks: transform what a Function keeps for its backward.

>>> import jax.numpy as jnp
>>> from custom_vjp import saved_tensors_hooks
>>> from custom_vjp import _state
>>> pack = lambda x: x.astype(jnp.bfloat16)
>>> unpack = lambda x: x.astype(jnp.float32)
>>> with saved_tensors_hooks(pack, unpack):
...     len(_state.saved_tensors_hooks_stack.get())
1

This is PyTorch's ``torch.autograd.graph.saved_tensors_hooks``.  While the
context is active, every array a ``custom_vjp.Function`` saves for its
backward (``ctx.save_for_backward`` and array attributes of ``ctx``) goes
through ``pack`` when the forward is traced, and the backward sees
``unpack(pack(x))``.  The innermost active pair applies; ``ctx.py``
records the matching ``unpack`` with the residual, so a backward always
unpacks with the hooks of its own forward.

Scope, in JAX terms:

* The hooks apply to Function residuals.  Residuals of plain JAX code are
  chosen by JAX's autodiff; control those with ``custom_vjp.checkpoint``'s
  ``policy`` (e.g. ``jax.checkpoint_policies.offload_dot_with_no_batch_dims``).
  Inside a ``checkpoint``-ed block a Function's forward is re-run during the
  backward pass, so ``pack`` runs on the recomputed residuals as well.
* The hooks are read when the forward is *traced*: a ``jit``-compiled function
  traced outside the context keeps its compiled residual handling until it is
  traced again.
* ``pack`` and ``unpack`` are JAX functions of arrays (they are staged into the
  program under ``jit``).

Ready-made pairs: :func:`cast_saved` (store residuals in a smaller dtype) and
:func:`offload_saved` (store residuals in host memory).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import jax
import jax.numpy as jnp

from custom_vjp import _state

__all__ = ["cast_saved", "current_saved_tensors_hooks", "offload_saved", "saved_tensors_hooks"]

Hook = Callable[[Any], Any]


class saved_tensors_hooks:
    """Context manager installing ``(pack, unpack)`` for the residuals of Functions.

    Contexts nest; the innermost pair is the one applied.

    >>> from custom_vjp.saved_tensors import current_saved_tensors_hooks
    >>> ident = lambda x: x
    >>> with saved_tensors_hooks(ident, ident) as outer:
    ...     with saved_tensors_hooks(abs, ident) as inner:
    ...         current_saved_tensors_hooks() == (abs, ident)
    True
    >>> current_saved_tensors_hooks() is None
    True
    """

    def __init__(self, pack_hook: Hook, unpack_hook: Hook) -> None:
        for label, hook in (("pack_hook", pack_hook), ("unpack_hook", unpack_hook)):
            if not callable(hook):
                raise TypeError(
                    f"saved_tensors_hooks: {label} must be callable, got {type(hook).__name__}"
                )
        self.pack_hook = pack_hook
        self.unpack_hook = unpack_hook
        self._tokens: list[Any] = []

    def __enter__(self) -> saved_tensors_hooks:
        stack = _state.saved_tensors_hooks_stack.get()
        pair = (self.pack_hook, self.unpack_hook)
        self._tokens.append(_state.saved_tensors_hooks_stack.set((*stack, pair)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _state.saved_tensors_hooks_stack.reset(self._tokens.pop())


def current_saved_tensors_hooks() -> tuple[Hook, Hook] | None:
    """The innermost active ``(pack, unpack)`` pair, or ``None`` outside any context.

    >>> current_saved_tensors_hooks() is None
    True
    """
    stack = _state.saved_tensors_hooks_stack.get()
    return stack[-1] if stack else None


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def cast_saved(
    storage_dtype: Any = jnp.bfloat16, compute_dtype: Any = jnp.float32
) -> saved_tensors_hooks:
    """Hooks storing floating residuals as ``storage_dtype``, restored as ``compute_dtype``.

    Integer and boolean residuals are left alone.  ``compute_dtype=None`` keeps
    the residual in ``storage_dtype`` for the backward.

    >>> import jax.numpy as jnp
    >>> hooks = cast_saved(jnp.bfloat16, jnp.float32)
    >>> packed = hooks.pack_hook(jnp.array([1.0, 1.0 + 2**-10]))
    >>> packed.dtype, hooks.unpack_hook(packed)
    (dtype(bfloat16), Array([1., 1.], dtype=float32))
    """
    storage = jnp.dtype(storage_dtype)
    compute = None if compute_dtype is None else jnp.dtype(compute_dtype)

    def pack(x: Any) -> Any:
        return x.astype(storage) if _is_float(x) else x

    def unpack(x: Any) -> Any:
        if compute is None or not _is_float(x) or x.dtype != storage:
            return x
        return x.astype(compute)

    return saved_tensors_hooks(pack, unpack)


def _has_host_memory() -> bool:
    try:
        kinds = {m.kind for m in jax.devices()[0].addressable_memories()}
    except Exception:  # a backend without memory kinds
        return False
    return "pinned_host" in kinds


def offload_saved() -> saved_tensors_hooks:
    """Hooks keeping residuals in host memory (``pinned_host``) until the backward needs them.

    PyTorch's ``save_on_cpu``.  Each residual is moved with
    ``jax.device_put(x, jax.memory.Space.Host)`` and brought back with
    ``jax.memory.Space.Device``.  On a backend without a host memory kind the
    hooks are the identity.

    >>> import jax.numpy as jnp
    >>> hooks = offload_saved()
    >>> x = hooks.unpack_hook(hooks.pack_hook(jnp.ones(2)))
    >>> x
    Array([1., 1.], dtype=float32)
    """
    if not _has_host_memory():
        return saved_tensors_hooks(lambda x: x, lambda x: x)

    def pack(x: Any) -> Any:
        return jax.device_put(x, jax.memory.Space.Host) if hasattr(x, "dtype") else x

    def unpack(x: Any) -> Any:
        return jax.device_put(x, jax.memory.Space.Device) if hasattr(x, "dtype") else x

    return saved_tensors_hooks(pack, unpack)
