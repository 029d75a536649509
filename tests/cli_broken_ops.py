"""A deliberately broken op module for ``tests/test_cli.py`` (not a test file).

* ``clibroken::double``: a host op on integers (so nothing to differentiate) whose
  fake predicts the wrong shape, so the fake, eager-vs-jit and vmap checks fail;
* ``clibroken::fine``: a correct traceable op;
* ``clibroken::nosamples``: an op without sample inputs (reported as SKIP).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxops
from jaxops.samples import register_sample_inputs


@jaxops.custom_op("clibroken::double", mutates_args=(), host=True)
def double(x: np.ndarray) -> np.ndarray:
    """``2 * x`` on the host."""
    return (2 * x).astype(x.dtype)


@double.register_fake
def _double_fake(x: Any) -> jax.ShapeDtypeStruct:
    # Wrong on purpose: the kernel keeps x's shape.
    return jax.ShapeDtypeStruct((x.shape[0] + 1, *x.shape[1:]), x.dtype)


@jaxops.custom_op("clibroken::fine", mutates_args=())
def fine(x: jax.Array) -> jax.Array:
    """``x + 1``."""
    return x + 1


@jaxops.custom_op("clibroken::nosamples", mutates_args=())
def nosamples(x: jax.Array) -> jax.Array:
    """``-x``; registers no sample inputs."""
    return -x


register_sample_inputs(double, lambda: [((jnp.arange(3, dtype=jnp.int32),), {})])
register_sample_inputs(fine, lambda: [((jnp.arange(3.0),), {})])
