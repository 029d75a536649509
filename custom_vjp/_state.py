"""Context-local switches shared by the modules of ``custom_vjp``.

``function.py`` reads them while a Function's forward/backward is traced; the
context managers in ``anomaly.py`` and ``saved_tensors.py`` set them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

#: True inside ``custom_vjp.detect_anomaly()``.
anomaly_mode: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "custom_vjp_anomaly_mode", default=False
)

#: Stack of active ``(pack, unpack)`` pairs from ``custom_vjp.saved_tensors_hooks``,
#: innermost last.  ``function.py`` applies the innermost ``pack`` to every saved
#: array when the forward is traced and records the matching ``unpack`` statically
#: next to the residual, so the backward unpacks with the hooks of its forward.
saved_tensors_hooks_stack: contextvars.ContextVar[
    tuple[tuple[Callable[[Any], Any], Callable[[Any], Any]], ...]
] = contextvars.ContextVar("custom_vjp_saved_tensors_hooks", default=())
