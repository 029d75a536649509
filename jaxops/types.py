"""Annotation aliases understood by :func:`jaxops.infer_schema`.

These mirror ``torch.types`` so that signatures port between the two worlds::

    import jax
    from jaxops.types import Number

    def scale(x: jax.Array, alpha: Number = 1) -> jax.Array:  # (Tensor x, Scalar alpha=1) -> Tensor
        return x * alpha
"""

from __future__ import annotations

import typing

import jax
import numpy as np

__all__ = ["DType", "Device", "Number", "Tensor"]

#: An array argument or result; schema type ``Tensor``.
Tensor = jax.Array

#: A Python number; schema type ``Scalar``. Like ``torch.types.Number`` it is the union
#: ``int | float | bool`` (so ``int | float | bool`` spelled out is recognised as well).
Number = typing.Union[int, float, bool]  # noqa: UP007 - a typing.Union object on purpose

#: A dtype argument; schema type ``ScalarType`` (``jnp.dtype`` is ``np.dtype``).
DType = np.dtype

#: A device argument; schema type ``Device``.
Device = jax.Device
