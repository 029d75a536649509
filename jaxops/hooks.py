"""Extension points of the op core for the layers above it (``jaxops.profiles``).

The core never imports the modules that extend it; they plug in here:

* a *fake override* (``set_fake_override``): consulted before an op's own fake,
  ``fn(definition) -> fake or None``;
* a *call recorder* (``set_call_recorder``): while set, every op call reports
  ``fn(definition, values, out)``; ``None`` switches recording off (the eager
  hot path checks it once per call);
* a *fake tracer* (``set_fake_tracer``, used by ``jaxops.plan``): while set, a
  traceable kernel of an op with a registered fake is traced as
  ``fn(definition, kernel, values, operands, body)`` instead of through its body.

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
FAKE_TRACER: list[Callable[..., Any] | None] = [None]


def set_fake_tracer(fn: Callable[..., Any] | None) -> None:
    """Trace traceable kernels of ops with a registered fake through ``fn`` (``None``: stop)."""
    FAKE_TRACER[0] = fn


def fake_tracer() -> Callable[..., Any] | None:
    """The active fake tracer, or None."""
    return FAKE_TRACER[0]


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


__all__ = [
    "CALL_RECORDER",
    "FAKE_OVERRIDE",
    "FAKE_TRACER",
    "call_recorder",
    "fake_override",
    "fake_tracer",
    "set_call_recorder",
    "set_fake_override",
    "set_fake_tracer",
]
