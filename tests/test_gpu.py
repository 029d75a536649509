"""GPU behaviour: kernel choice per device, host ops on GPU arrays, factories (skipped without a GPU).

Run on a GPU machine with ``python -m pytest -m gpu tests/test_gpu.py`` (or the whole suite
with ``nox -s gpu``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops

pytestmark = pytest.mark.gpu  # tests/conftest.py skips these when JAX sees no GPU


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


def test_missing_kernel_on_gpu_arrays_names_gpu_and_register_kernel():
    @jaxops.custom_op("t_gpu::cpu_host", mutates_args=(), device_types="cpu", host=True)
    def cpu_host(x: jax.Array) -> jax.Array:
        return np.asarray(x) + 1

    x = jax.device_put(jnp.zeros(4), jax.devices("gpu")[0])
    msg = "t_gpu::cpu_host: no kernel for device type 'gpu' (registered: cpu); register one with cpu_host.register_kernel('gpu')"
    with pytest.raises(RuntimeError) as eager:
        cpu_host(x)
    assert str(eager.value) == msg
    with pytest.raises(RuntimeError) as traced:
        jax.jit(cpu_host)(x)  # no fake either: the message names both
    assert msg in str(traced.value) and "there is no fake impl registered" in str(traced.value)
    cpu_host.register_fake(lambda x: x)
    with pytest.raises(RuntimeError) as traced:
        jax.jit(cpu_host)(x)
    assert msg in str(traced.value)


def test_cpu_host_kernel_without_fake_beside_a_traceable_default_on_gpu():
    @jaxops.custom_op("t_gpu::mixed", mutates_args=())
    def mixed(x: jax.Array) -> jax.Array:
        return x * 2

    @mixed.register_kernel("cpu", host=True)
    def _(x):
        return np.asarray(x) * 3

    x = jax.device_put(jnp.ones(4), jax.devices("gpu")[0])
    np.testing.assert_allclose(mixed(x), 2.0)
    np.testing.assert_allclose(jax.jit(mixed)(x), 2.0)
    xc = jax.device_put(jnp.ones(4), jax.devices("cpu")[0])
    np.testing.assert_allclose(mixed(xc), 3.0)  # eagerly the CPU host kernel needs no fake
