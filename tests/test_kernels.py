"""jaxops.kernels / dispatch / host / fake: kernels per device, host kernels, fakes (API.md §2-§3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import on_cpu

import jaxops

X = jnp.array([3.0, 1.0, 2.0])
XC = on_cpu(X)  # committed to the CPU: tests of CPU kernels pin their arrays there


# ------------------------------------------------------------------- kernels
def test_register_kernel_device_types_validation():
    @jaxops.custom_op("t_k::kv", mutates_args=())
    def kv(x: jax.Array) -> jax.Array:
        return x

    for bad in ("npu", ["cpu", "fpga"], 3):
        with pytest.raises(ValueError, match="device type"):
            kv.register_kernel(bad)(lambda x: x)
    for good in ("cpu", "gpu", "cuda", "rocm", "tpu", ["cpu", "gpu"], None):
        kv.register_kernel(good)(lambda x: x * 1)


def test_platform_kernel_wins_over_default_eager_and_jit():
    @jaxops.custom_op("t_k::plat", mutates_args=())
    def plat(x: jax.Array) -> jax.Array:
        return x + 100

    plat.register_kernel("cpu")(lambda x: x * 2)
    plat.register_kernel("gpu")(lambda x: x * 3)
    np.testing.assert_allclose(plat(XC), X * 2)
    np.testing.assert_allclose(jax.jit(plat)(XC), X * 2)
    # Chosen at lowering time: one branch per platform, nothing left in the compiled CPU program.
    hlo = jax.jit(plat).lower(XC).compile().as_text()
    assert "conditional" not in hlo and "case" not in hlo.lower().split("entry")[-1]


def test_functional_register_kernel_and_lookup_by_name():
    @jaxops.custom_op("t_k::fk", mutates_args=(), device_types="cpu")
    def fk(x: jax.Array) -> jax.Array:
        return x + 1

    jaxops.register_kernel("t_k::fk", "cpu", lambda x: x - 1)
    np.testing.assert_allclose(fk(XC), X - 1)


def test_kernel_for_other_platform_only_is_reported_eagerly():
    @jaxops.custom_op("t_k::gpu_only", mutates_args=(), device_types="gpu")
    def gpu_only(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(RuntimeError, match=r"t_k::gpu_only: no kernel for device type 'cpu'"):
        gpu_only(XC)


def test_missing_kernel_messages_echo_the_registered_spelling():
    @jaxops.custom_op("t_k::sp_gpu", mutates_args=(), device_types="gpu")
    def sp_gpu(x: jax.Array) -> jax.Array:
        return x

    @jaxops.custom_op("t_k::sp_cuda", mutates_args=(), device_types="cuda")
    def sp_cuda(x: jax.Array) -> jax.Array:
        return x

    gpu_msg = "t_k::sp_gpu: no kernel for device type 'cpu' (registered: gpu); register one with sp_gpu.register_kernel('cpu')"
    cuda_msg = "t_k::sp_cuda: no kernel for device type 'cpu' (registered: cuda); register one with sp_cuda.register_kernel('cpu')"
    for op, msg in ((sp_gpu, gpu_msg), (sp_cuda, cuda_msg)):
        with pytest.raises(RuntimeError) as eager:
            op(XC)
        assert str(eager.value) == msg
        with pytest.raises(RuntimeError) as traced:
            jax.jit(op)(XC)
        assert msg in str(traced.value)
    assert "kernels[gpu:traceable]" in repr(sp_gpu) and "kernels[cuda:traceable]" in repr(sp_cuda)
    assert jaxops.dispatch.no_kernel_message("a::f", "cuda", ["cpu"]) == (
        "a::f: no kernel for device type 'gpu' (registered: cpu); register one with f.register_kernel('gpu')"
    )
    assert jaxops.dispatch.no_kernel_message("a::f", "cuda", ["cpu", "rocm"]).startswith(
        "a::f: no kernel for device type 'cuda' (registered: cpu, rocm)"
    )


def test_host_kernel_without_fake_for_another_platform_does_not_block_this_one():
    # A traceable default plus a host kernel (no fake) for the GPU: the CPU runs the
    # default, eagerly and under jit; only lowering for the GPU needs the fake.
    @jaxops.custom_op("t_k::hgpu", mutates_args=())
    def hgpu(x: jax.Array) -> jax.Array:
        return x * 2

    hgpu.register_kernel("gpu", host=True)(lambda x: np.asarray(x) * 3)
    np.testing.assert_allclose(hgpu(XC), X * 2)
    np.testing.assert_allclose(jax.jit(hgpu)(XC), X * 2)
    with pytest.raises(RuntimeError, match=r"t_k::hgpu: there is no fake impl registered.*\(the host kernel for device type 'gpu' is needed"):
        jax.export.export(jax.jit(hgpu), platforms=("cuda",))(XC)
    hgpu.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    np.testing.assert_allclose(jax.jit(hgpu)(XC), X * 2)


def test_host_only_op_without_fake_under_jit_on_a_platform_without_kernel():
    # Only a GPU host kernel and no fake: jit on the CPU can neither trace the kernel nor
    # find one for the CPU; the error says both.
    @jaxops.custom_op("t_k::honly", mutates_args=(), device_types="gpu", host=True)
    def honly(x: jax.Array) -> jax.Array:
        return np.asarray(x) + 1

    with pytest.raises(RuntimeError, match=r"t_k::honly: no kernel for device type 'cpu' \(registered: gpu\)"):
        honly(XC)
    if jax.default_backend() == "cpu":
        with pytest.raises(RuntimeError, match=r"no kernel for device type 'cpu' \(registered: gpu\).*there is no fake impl registered"):
            jax.jit(honly)(XC)


def test_no_tensor_inputs_needs_device():
    @jaxops.custom_op("t_k::maybe", mutates_args=())
    def maybe(x: jax.Array | None, n: int) -> jax.Array:
        return jnp.zeros(n)

    with pytest.raises(RuntimeError, match="no Tensor inputs"):
        maybe(None, 3)


def test_factory_op_with_device():
    @jaxops.custom_op("t_k::full", mutates_args=())
    def full(n: int, value: float, device: jax.Device) -> jax.Array:
        return jnp.full((n,), value)

    out = full(3, 2.0, jax.devices("cpu")[0])
    np.testing.assert_allclose(out, [2.0, 2.0, 2.0])
    assert out.devices() == {jax.devices("cpu")[0]}
    np.testing.assert_allclose(full(2, 1.0, device="cpu"), [1.0, 1.0])
    np.testing.assert_allclose(jax.jit(lambda: full(2, 5.0, "cpu"))(), [5.0, 5.0])


# ---------------------------------------------------------------------- host
@pytest.fixture
def host_sort():
    seen = []

    @jaxops.custom_op("t_k::hsort", mutates_args=(), host=True)
    def hsort(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        seen.append(type(x))
        idx = np.argsort(x, kind="stable")
        return x[idx], idx.astype(np.int32)

    @hsort.register_fake
    def _(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(x.shape, jnp.int32)

    hsort.seen = seen
    return hsort


def test_host_eager_calls_kernel_directly(host_sort, monkeypatch):
    def no_callback(*a, **k):
        raise AssertionError("eager host call must not go through pure_callback")

    monkeypatch.setattr(jax, "pure_callback", no_callback)
    vals, idx = host_sort(X)
    np.testing.assert_allclose(vals, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(idx, [1, 2, 0])
    assert isinstance(vals, jax.Array)
    assert host_sort.seen == [np.ndarray]


def test_host_under_jit_vmap_eval_shape(host_sort):
    vals, idx = jax.jit(host_sort)(X)
    np.testing.assert_allclose(vals, [1.0, 2.0, 3.0])
    xs = jnp.stack([X, -X])
    bv, bi = jax.vmap(host_sort)(xs)
    np.testing.assert_allclose(bv, jnp.sort(xs, axis=1))
    np.testing.assert_array_equal(bi, jnp.argsort(xs, axis=1))
    sv, si = jax.eval_shape(host_sort, jax.ShapeDtypeStruct((5,), jnp.float32))
    assert sv.shape == (5,) and si.dtype == jnp.int32


def test_host_op_without_fake_cannot_be_traced():
    @jaxops.custom_op("t_k::nofake", mutates_args=(), host=True)
    def nofake(x: jax.Array) -> jax.Array:
        return np.sin(x)

    np.testing.assert_allclose(nofake(X), np.sin(X), rtol=1e-6)  # eager is fine
    for transform in (jax.jit, lambda f: (lambda x: jax.eval_shape(f, x))):
        with pytest.raises(RuntimeError, match="no fake impl") as info:
            transform(nofake)(X)
        assert "t_k::nofake" in str(info.value) and "register_fake" in str(info.value)


def test_second_fake_names_first_location(host_sort):
    with pytest.raises(RuntimeError, match=r"already registered at .*test_kernels\.py:\d+"):
        host_sort.register_fake(lambda x: x)


def test_fake_for_traceable_op_is_allowed():
    @jaxops.custom_op("t_k::tf", mutates_args=())
    def tf(x: jax.Array) -> jax.Array:
        return x * 2

    jaxops.register_fake("t_k::tf", lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert jax.eval_shape(tf, jax.ShapeDtypeStruct((2,), jnp.float32)).shape == (2,)


def test_fake_can_use_jnp_on_abstract_values():
    @jaxops.custom_op("t_k::houter", mutates_args=(), host=True)
    def houter(a: jax.Array, b: jax.Array) -> jax.Array:
        return np.outer(a, b)

    @houter.register_fake
    def _(a, b):
        return jnp.empty((a.shape[0], b.shape[0]), jnp.result_type(a, b))

    assert jax.jit(houter)(X, jnp.ones(2)).shape == (3, 2)


def test_host_kernel_exception_names_op_eager_and_jit():
    @jaxops.custom_op("t_k::boom", mutates_args=(), host=True)
    def boom(x: jax.Array) -> jax.Array:
        if x.sum() > 100:
            raise ValueError("input too large")
        return x

    boom.register_fake(lambda x: x)
    with pytest.raises(ValueError, match=r"t_k::boom: the host kernel raised ValueError: input too large"):
        boom(X * 100)
    with pytest.raises(RuntimeError, match=r"t_k::boom: the host kernel raised ValueError: input too large"):
        jax.jit(boom)(X * 100).block_until_ready()
    # the process stays usable
    np.testing.assert_allclose(jax.jit(boom)(X), X)


def test_host_kernel_disagreeing_with_fake_is_reported():
    @jaxops.custom_op("t_k::liar", mutates_args=(), host=True)
    def liar(x: jax.Array) -> jax.Array:
        return np.concatenate([x, x])

    liar.register_fake(lambda x: x)
    with pytest.raises(RuntimeError, match=r"t_k::liar: output 0 of the host kernel has shape \(6,\) but the fake"):
        jax.jit(liar)(X).block_until_ready()


def test_host_output_aliasing_input_is_rejected_eagerly():
    @jaxops.custom_op("t_k::alias", mutates_args=(), host=True)
    def alias(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(RuntimeError, match="may not alias"):
        alias(np.ones(3))


def _host_double(name: str):
    @jaxops.custom_op(name, mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        return x * 2

    return op


def test_host_kernel_dtype_differing_from_the_fake_raises_eagerly_and_under_jit():
    @jaxops.custom_op("w2v::dt", mutates_args=(), host=True)
    def dt(x: jax.Array) -> jax.Array:
        return (x * 2).astype(np.int64)

    dt.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32))
    with pytest.raises(RuntimeError, match=r"w2v::dt.*dtype"):
        dt(jnp.ones(3))
    with pytest.raises(RuntimeError, match=r"w2v::dt.*dtype"):
        jax.block_until_ready(jax.jit(dt)(jnp.ones(3)))


def test_host_kernel_shape_differing_from_the_fake_raises_eagerly():
    @jaxops.custom_op("w2v::sh", mutates_args=(), host=True)
    def sh(x: jax.Array) -> jax.Array:
        return np.concatenate([x, x])

    sh.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    with pytest.raises(RuntimeError, match=r"w2v::sh.*shape \(6,\).*\(3,\)"):
        sh(jnp.ones(3))


def test_set_kernel_enabled_falls_back_to_the_default_kernel():
    @jaxops.custom_op("w2v::ke", mutates_args=())
    def ke(x: jax.Array) -> jax.Array:
        return x + 1

    platform = jax.devices()[0].platform
    ke.register_kernel(platform, lambda x: x + 100)
    x = jnp.zeros(1)
    assert float(ke(x)[0]) == 100.0
    with ke.set_kernel_enabled(platform, enabled=False):
        assert float(ke(x)[0]) == 1.0
        assert float(jax.jit(ke)(x)[0]) == 1.0
        assert jaxops.get_kernel(ke, platform)(x).tolist() == [1.0]
    assert float(ke(x)[0]) == 100.0
    assert float(jax.jit(ke)(x)[0]) == 100.0
    assert jaxops.get_kernel(ke, platform)(x).tolist() == [100.0]


def test_get_kernel_errors():
    op = _host_double("w2v::gk")
    with pytest.raises(ValueError, match="device type"):
        jaxops.get_kernel(op, "abacus")
    with pytest.raises(ValueError, match="device type"):
        op.set_kernel_enabled("abacus", enabled=False)


def test_errors_from_a_traceable_body_a_fake_and_a_backward_name_the_op():
    @jaxops.custom_op("w2v::boom", mutates_args=())
    def boom(x: jax.Array) -> jax.Array:
        raise ValueError("bad input in the body")

    with pytest.raises(ValueError, match=r"w2v::boom: the kernel raised ValueError: bad input in the body"):
        boom(jnp.ones(2))
    with pytest.raises(ValueError, match=r"w2v::boom: the kernel raised"):
        jax.jit(boom)(jnp.ones(2))

    op = _host_double("w2v::fakeboom")

    @op.register_fake
    def _(x):
        raise LookupError("fake broke")

    with pytest.raises(LookupError, match=r"w2v::fakeboom: the fake \(register_fake\) raised LookupError: fake broke"):
        jax.eval_shape(op, jnp.ones(2))

    @jaxops.custom_op("w2v::bwboom", mutates_args=())
    def bw(x: jax.Array) -> jax.Array:
        return x * 2

    def backward(ctx, g):
        raise ZeroDivisionError("no gradient today")

    bw.register_autograd(backward)
    with pytest.raises(ZeroDivisionError, match=r"w2v::bwboom: the backward \(register_autograd\) raised"):
        jax.grad(lambda v: bw(v).sum())(jnp.ones(2))
