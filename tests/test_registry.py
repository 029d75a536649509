"""jaxops.registry: the cache epoch and global modes retrace what they must, and only that."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops

X = jnp.array([3.0, 1.0, 2.0])


# ------------------------------------------------------------ autograd fallback
@pytest.fixture
def hsin():
    @jaxops.custom_op("t_k::hsin", mutates_args=(), host=True)
    def hsin(x: jax.Array) -> jax.Array:
        return np.sin(x)

    hsin.register_fake(lambda x: x)
    return hsin


def test_mode_change_retraces_an_already_jitted_function(hsin):
    f = jax.jit(jax.grad(lambda x: hsin(x).sum()))
    with jaxops.autograd_fallback_mode("nothing"):
        np.testing.assert_allclose(f(X), jnp.zeros(3))
    with jaxops.autograd_fallback_mode("error"):
        with pytest.raises(RuntimeError, match="no autograd formula"):
            f(X)


def test_mode_set_inside_a_jitted_step_does_not_retrace_every_call(hsin):
    traces = []

    @jax.jit
    def step(x):
        traces.append(1)
        with jaxops.autograd_fallback_mode("nothing"):
            return jax.grad(lambda a: hsin(a).sum())(x)

    for _ in range(5):
        step(X)
    assert len(traces) <= 2  # modes enter the cache key by value: leaving one restores it
