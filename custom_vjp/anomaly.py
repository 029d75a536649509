"""Anomaly detection: name the Function whose ``backward`` produced a NaN.

>>> import jax, jax.numpy as jnp
>>> import custom_vjp
>>> with custom_vjp.detect_anomaly():
...     custom_vjp.is_anomaly_enabled()
True

Inside ``detect_anomaly()`` the Function core (``call.py``) calls
:func:`check_backward_outputs` on the normalized gradients of every
``backward`` it traces.  A NaN raises ``RuntimeError`` with PyTorch's text
``Function 'NAME' returned nan values in its 0th output.``:

* eagerly (concrete gradients) the check runs in Python and raises
  ``RuntimeError`` directly;
* under tracing (``jit``, ``vmap``, ``scan``) the check is staged as a
  ``jax.debug.callback`` on one boolean per gradient.  The callback raises the
  ``RuntimeError`` on the host; when that happens inside a compiled program JAX
  re-raises it as ``jax.errors.JaxRuntimeError`` (a ``RuntimeError`` subclass)
  whose message embeds the original text (measured on JAX 0.10.2 CPU).
  ``jax.experimental.io_callback`` behaves the same way, but a debug callback
  needs no data dependency and is never removed as dead code.

The mode is read when the backward is *traced*, and it is part of JAX's
trace-cache key (``_state.TraceKeyedVar``): a function jitted outside
``detect_anomaly()`` is traced again, with the checks, when called inside it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from custom_vjp import _state

__all__ = [
    "check_backward_outputs",
    "detect_anomaly",
    "is_anomaly_enabled",
    "set_detect_anomaly",
]


def is_anomaly_enabled() -> bool:
    """Whether ``detect_anomaly()`` is active in the current context.

    >>> is_anomaly_enabled()
    False
    """
    return _state.anomaly_mode.get()


class set_detect_anomaly:
    """Turn anomaly detection on or off, for a ``with`` block or for the rest of the context.

    Used as a context manager it restores the previous mode on exit:

    >>> with set_detect_anomaly(True):
    ...     is_anomaly_enabled()
    True
    >>> is_anomaly_enabled()
    False
    """

    def __init__(self, mode: bool) -> None:
        if not isinstance(mode, bool):
            raise TypeError(f"set_detect_anomaly: mode must be a bool, got {type(mode).__name__}")
        self.mode = mode
        # Called without ``with`` (``set_detect_anomaly(True)``) it sets the mode at once,
        # like torch.autograd.set_detect_anomaly.
        self._token = _state.anomaly_mode.set(mode)

    def __enter__(self) -> set_detect_anomaly:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _state.anomaly_mode.reset(self._token)


class detect_anomaly:
    """Context manager (and decorator) enabling NaN checks on every Function ``backward``.

    >>> import custom_vjp
    >>> with custom_vjp.detect_anomaly():
    ...     custom_vjp.is_anomaly_enabled()
    True
    >>> @custom_vjp.detect_anomaly()
    ... def debug_me():
    ...     return custom_vjp.is_anomaly_enabled()
    >>> debug_me()
    True

    ``check_nan=False`` gives a block where the checks are off (e.g. nested
    inside an outer ``detect_anomaly()``).
    """

    def __init__(self, check_nan: bool = True) -> None:
        if not isinstance(check_nan, bool):
            raise TypeError(
                f"detect_anomaly: check_nan must be a bool, got {type(check_nan).__name__}"
            )
        self.check_nan = check_nan
        self._tokens: list[Any] = []

    def __enter__(self) -> detect_anomaly:
        self._tokens.append(_state.anomaly_mode.set(self.check_nan))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _state.anomaly_mode.reset(self._tokens.pop())

    def __call__(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with detect_anomaly(self.check_nan):
                return fn(*args, **kwargs)

        return wrapper


def _message(function_name: str, index: int) -> str:
    return f"Function '{function_name}' returned nan values in its {index}th output."


def _raise_for_flags(function_name: str, indices: Sequence[int], flags: Any) -> None:
    """Host side of the staged check: raise for the first gradient flagged NaN."""
    flags = np.asarray(flags)
    if flags.ndim > 1:  # batched under vmap: any batch member counts
        flags = flags.reshape(-1, flags.shape[-1]).any(axis=0)
    for idx, bad in zip(indices, flags.reshape(-1)):
        if bad:
            raise RuntimeError(_message(function_name, idx))


def check_backward_outputs(function_name: str, grads: tuple[Any, ...]) -> None:
    """Raise ``RuntimeError`` if any gradient in ``grads`` holds a NaN.

    ``grads`` is the tuple a Function's ``backward`` returned after
    normalization: one entry per forward input, each ``None``, an array, or a
    pytree of arrays (a list input).  The error names the Function and the
    index of the first entry holding a NaN.  Eagerly it raises at once; under
    tracing it stages a ``jax.debug.callback`` that raises when the program
    runs.

    >>> import jax.numpy as jnp
    >>> check_backward_outputs("MyFn", (jnp.ones(2), None))
    >>> check_backward_outputs("MyFn", (None, jnp.array([1.0, jnp.nan])))
    Traceback (most recent call last):
        ...
    RuntimeError: Function 'MyFn' returned nan values in its 1th output.
    """
    if not isinstance(grads, tuple | list):
        grads = (grads,)
    indices: list[int] = []
    leaves: list[Any] = []
    for idx, grad in enumerate(grads):
        for leaf in jax.tree.leaves(grad):
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
                indices.append(idx)
                leaves.append(leaf)
    if not leaves:
        return
    if not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        for idx, leaf in zip(indices, leaves):
            if np.isnan(np.asarray(leaf)).any():
                raise RuntimeError(_message(function_name, idx))
        return
    flags = jnp.stack([jnp.isnan(leaf).any() for leaf in leaves])
    jax.debug.callback(functools.partial(_raise_for_flags, function_name, tuple(indices)), flags)
