"""jax.export of functions that call ops (API.md §0)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jaxops


@pytest.fixture
def mm():
    @jaxops.custom_op("t_exp::mm", mutates_args=(), device_types="cpu")
    def mm(x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.tanh(x @ w)

    mm.register_kernel("gpu")(lambda x, w: jnp.tanh(x @ w))
    return mm


def test_export_multi_platform(mm):
    x = jnp.ones((3, 4))
    w = jnp.full((4, 2), 0.1)
    exp = export.export(jax.jit(mm), platforms=("cpu", "cuda"))(x, w)
    assert exp.platforms == ("cpu", "cuda")
    np.testing.assert_allclose(exp.call(x, w), jnp.tanh(x @ w), rtol=1e-6)


def test_export_symbolic_batch_and_grad(mm):
    (b,) = export.symbolic_shape("b")
    w = jnp.full((4, 2), 0.1)
    exp = export.export(jax.jit(mm))(jax.ShapeDtypeStruct((b, 4), jnp.float32), w)
    assert str(exp.in_avals[0].shape[0]) == "b"
    assert exp.call(jnp.ones((5, 4)), w).shape == (5, 2)
    g = export.export(jax.jit(jax.grad(lambda x, w: mm(x, w).sum(), argnums=1)))(
        jax.ShapeDtypeStruct((b, 4), jnp.float32), w
    )
    x = jnp.ones((6, 4))
    np.testing.assert_allclose(g.call(x, w), jax.grad(lambda w: jnp.tanh(x @ w).sum())(w), rtol=1e-5)


def test_export_of_host_op_is_refused_by_jax():
    # Host callbacks cannot be serialized (a JAX limitation): exporting fails loudly.
    @jaxops.custom_op("t_exp::h", mutates_args=(), host=True)
    def h(x: jax.Array) -> jax.Array:
        return np.sin(x)

    h.register_fake(lambda x: x)
    with pytest.raises(NotImplementedError, match="host_callbacks"):
        export.export(jax.jit(h))(jnp.ones(3))
