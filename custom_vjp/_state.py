"""Context-local switches shared by the modules of ``custom_vjp``.

``ctx.py`` and ``call.py`` read them while a Function's forward/backward is traced; the
context managers in ``anomaly.py`` and ``saved_tensors.py`` set them.

Both are read at *trace* time, so both are part of JAX's trace-cache key
(:func:`jax.make_user_context`): a function jitted outside ``detect_anomaly()``
(or outside a ``saved_tensors_hooks`` block) is traced again when called inside
one, as a PyTorch user expects the mode to apply to every backward it covers.
They keep the ``ContextVar`` interface (``get``/``set``/``reset(token)``); the
value is thread-local, as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import jax

T = TypeVar("T")


class TraceKeyedVar(Generic[T]):
    """A ``ContextVar``-like switch whose value is part of JAX's trace-cache key.

    >>> flag = TraceKeyedVar(False)
    >>> token = flag.set(True); flag.get()
    True
    >>> flag.reset(token); flag.get()
    False
    """

    def __init__(self, default: T) -> None:
        self._cfg = jax.make_user_context(default)

    def get(self) -> T:
        return self._cfg.value

    def set(self, value: T) -> Any:
        token = self._cfg(value)
        token.__enter__()
        return token

    def reset(self, token: Any) -> None:
        token.__exit__(None, None, None)


#: True inside ``custom_vjp.detect_anomaly()``.
anomaly_mode: TraceKeyedVar[bool] = TraceKeyedVar(False)

#: Stack of active ``(pack, unpack)`` pairs from ``custom_vjp.saved_tensors_hooks``,
#: innermost last.  ``ctx.freeze`` applies the innermost ``pack`` to every saved
#: array when the forward is traced and records the matching ``unpack`` statically
#: next to the residual, so the backward unpacks with the hooks of its forward.
saved_tensors_hooks_stack: TraceKeyedVar[
    tuple[tuple[Callable[[Any], Any], Callable[[Any], Any]], ...]
] = TraceKeyedVar(())
