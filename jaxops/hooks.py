"""Extension points of the op core for the layers above it (``jaxops.profiles``).

The core never imports the modules that extend it; they plug in here:

* a *fake override* (``set_fake_override``): consulted before an op's own fake,
  ``fn(definition) -> fake or None``;
* a *call recorder* (``set_call_recorder``): while set, every op call reports
  ``fn(definition, values, out)``; ``None`` switches recording off (the eager
  hot path checks it once per call).

>>> from jaxops import hooks
>>> hooks.call_recorder() is None
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: One-element lists so that readers bound the list once and see every update.
FAKE_OVERRIDE: list[Callable[[Any], Any] | None] = [None]
CALL_RECORDER: list[Callable[[Any, list[Any], Any], None] | None] = [None]


def set_fake_override(fn: Callable[[Any], Any] | None) -> None:
    """Install ``fn(definition) -> fake or None`` (``None`` removes it)."""
    FAKE_OVERRIDE[0] = fn


def fake_override(definition: Any) -> Any:
    """The overriding fake for ``definition``, or None."""
    fn = FAKE_OVERRIDE[0]
    return None if fn is None else fn(definition)


def set_call_recorder(fn: Callable[[Any, list[Any], Any], None] | None) -> None:
    """Report every op call to ``fn(definition, values, out)`` (``None``: stop)."""
    CALL_RECORDER[0] = fn


def call_recorder() -> Callable[[Any, list[Any], Any], None] | None:
    """The active call recorder, or None."""
    return CALL_RECORDER[0]


__all__ = ["CALL_RECORDER", "FAKE_OVERRIDE", "call_recorder", "fake_override", "set_call_recorder", "set_fake_override"]
