"""Fake profiles: op signatures recorded from real calls, served as fakes.

(PyTorch's ``torch._library.fake_profile`` in JAX terms.)  The op machinery
calls two hooks: :func:`_override_fake` (while ``unsafe_generate_fake_kernels``
is active) and :func:`_record_call` (while ``record_op_profiles`` is active).
This module must not import ``jaxops.op`` at module level.
"""

from __future__ import annotations

from typing import Any

#: True while a ``record_op_profiles()`` block is active (checked on every op call).
_RECORDING = False

#: Profiles served as fakes by ``unsafe_generate_fake_kernels``; None when inactive.
_ACTIVE: dict[str, Any] | None = None


def _override_fake(op: Any) -> Any:
    """A fake built from the active profiles for ``op``, or None when none apply."""
    if _ACTIVE is None or op.qualname not in _ACTIVE:
        return None
    raise NotImplementedError("profile-served fakes are being implemented")


def _record_call(op: Any, values: list[Any], out: Any) -> None:
    """Record the metadata of one op call (inputs and outputs)."""
