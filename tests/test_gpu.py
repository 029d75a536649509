"""GPU behaviour: kernel choice per device, host ops on GPU arrays, factories (skipped without a GPU).

Run on a GPU machine with ``python -m pytest -m gpu tests/test_gpu.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _has_gpu(), reason="needs a GPU (none visible to JAX)")]


@pytest.fixture
def per_device():
    @jaxops.custom_op("t_gpu::which", mutates_args=(), device_types="cpu")
    def which(x: jax.Array) -> jax.Array:
        return x + 1.0

    @which.register_kernel("gpu")
    def _(x):
        return x + 2.0

    return which


def test_kernel_chosen_by_input_device_eagerly(per_device):
    x_gpu = jax.device_put(jnp.zeros(4), jax.devices("gpu")[0])
    x_cpu = jax.device_put(jnp.zeros(4), jax.devices("cpu")[0])
    np.testing.assert_allclose(per_device(x_gpu), 2.0)
    np.testing.assert_allclose(per_device(x_cpu), 1.0)
    assert per_device(x_gpu).devices() == {jax.devices("gpu")[0]}


def test_kernel_chosen_at_lowering_under_jit(per_device):
    x_gpu = jax.device_put(jnp.zeros(4), jax.devices("gpu")[0])
    f = jax.jit(lambda x: per_device(x) * 3)
    np.testing.assert_allclose(f(x_gpu), 6.0)
    text = f.lower(x_gpu).compile().as_text()
    assert "conditional" not in text


def test_host_op_on_gpu_arrays():
    @jaxops.custom_op("t_gpu::hcos", mutates_args=(), host=True)
    def hcos(x: jax.Array) -> jax.Array:
        assert isinstance(x, np.ndarray)
        return np.cos(x)

    hcos.register_fake(lambda x: x)
    x = jax.device_put(jnp.linspace(0, 1, 8), jax.devices("gpu")[0])
    out = hcos(x)
    np.testing.assert_allclose(out, np.cos(np.asarray(x)), rtol=1e-6)
    assert out.devices() == {jax.devices("gpu")[0]}
    np.testing.assert_allclose(jax.jit(hcos)(x), np.cos(np.asarray(x)), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(hcos)(x.reshape(2, 4)), np.cos(np.asarray(x)).reshape(2, 4), rtol=1e-6)


def test_factory_on_gpu():
    @jaxops.custom_op("t_gpu::ones", mutates_args=())
    def ones(n: int, device: jax.Device) -> jax.Array:
        return jnp.ones((n,))

    out = ones(3, "gpu")
    assert out.devices() == {jax.devices("gpu")[0]}
    out_cpu = ones(3, "cpu")
    assert out_cpu.devices() == {jax.devices("cpu")[0]}


def test_autograd_on_gpu():
    @jaxops.custom_op("t_gpu::hsin", mutates_args=(), host=True)
    def hsin(x: jax.Array) -> jax.Array:
        return np.sin(x)

    hsin.register_fake(lambda x: x)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    hsin.register_autograd(lambda ctx, g: g * jnp.cos(ctx.saved_tensors[0]), setup_context=setup)
    x = jax.device_put(jnp.linspace(0, 1, 8), jax.devices("gpu")[0])
    g = jax.jit(jax.grad(lambda a: hsin(a).sum()))(x)
    np.testing.assert_allclose(g, jnp.cos(x), rtol=1e-5)
    t = jax.jvp(hsin, (x,), (jnp.ones_like(x),))[1]
    np.testing.assert_allclose(t, jnp.cos(x), rtol=1e-5)


def test_same_hlo_as_plain_jax_on_gpu():
    @jaxops.custom_op("t_gpu::mlp", mutates_args=())
    def mlp(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.nn.relu(x @ w)

    def with_op(x, w):
        return mlp(mlp(x, w), w.T).sum()

    def plain(x, w):
        return jax.nn.relu(jax.nn.relu(x @ w) @ w.T).sum()

    dev = jax.devices("gpu")[0]
    x = jax.device_put(jnp.ones((32, 64)), dev)
    w = jax.device_put(jnp.ones((64, 64)) * 0.01, dev)
    import re

    def ops(f):
        text = jax.jit(f).lower(x, w).compile().as_text()
        return sorted(re.findall(r"=\s*[a-z0-9\[\]{},]+\s+([a-z\-]+)\(", text))

    assert ops(with_op) == ops(plain)
