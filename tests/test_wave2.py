"""Registration validation, lib= functional forms, kernel enabling, fake numbers, traced scalars, vmap warning."""

from __future__ import annotations

import warnings

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops


def _host_double(name: str):
    @jaxops.custom_op(name, mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        return x * 2

    return op


# ------------------------------------------------------------ 16.4: no half-registered state
def test_impl_with_one_bad_type_registers_nothing():
    op = _host_double("w2v::impl_bad")
    with pytest.raises(ValueError, match="bogus"):
        jaxops.impl("w2v::impl_bad", ["cpu", "bogus"], lambda x: x + 100)
    assert jaxops.get_kernel(op, "cpu")(np.ones(2)).tolist() == [2.0, 2.0]
    np.testing.assert_allclose(op(jax.device_put(jnp.ones(2), jax.devices("cpu")[0])), [2.0, 2.0])


@pytest.mark.parametrize(
    "register",
    [
        lambda op: op.register_fake(3),
        lambda op: jaxops.register_fake(op, 3),
        lambda op: op.register_kernel("cpu", 3),
        lambda op: jaxops.register_kernel(op, "cpu", 3),
        lambda op: jaxops.Library("w2v", "FRAGMENT").impl(op.name, None, "cpu"),
        lambda op: op.register_vmap(3),
        lambda op: op.register_sharding(3),
    ],
)
def test_non_callable_registrations_are_refused_at_the_call(register):
    op = _host_double("w2v::junk")
    with pytest.raises(TypeError, match=r"w2v::junk.*callable"):
        register(op)
    # nothing was stored: a real fake can still be registered, and the op still runs
    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    np.testing.assert_allclose(jax.jit(op)(jnp.ones(2)), [2.0, 2.0])


def test_destroying_a_library_keeps_an_op_that_was_redefined_since():
    lib = jaxops.Library("w2v_re", "FRAGMENT")
    lib.define("f(Tensor x) -> Tensor")
    lib.impl("f", lambda x: x + 1, "default")

    @jaxops.custom_op("w2v_re::f", mutates_args=())
    def f(x: jax.Array) -> jax.Array:
        return x * 10

    lib._destroy()
    assert jaxops.ops.w2v_re.f.default is f or jaxops.ops.w2v_re.f(jnp.ones(1)).tolist() == [10.0]
    np.testing.assert_allclose(jaxops.ops.w2v_re.f(jnp.ones(1)), [10.0])


# ----------------------------------------------------------------- 16.3: no silent wrong results
def test_define_with_a_mismatched_schema_name_is_refused():
    with pytest.raises(ValueError, match=r"w2v::g1.*'g2'"):
        jaxops.define("w2v::g1", "g2(Tensor x) -> Tensor")


def test_custom_op_name_with_an_overload_is_refused():
    with pytest.raises(ValueError, match=r"overload"):
        jaxops.custom_op("w2v::foo.bar", lambda x: x, mutates_args=(), schema="(Tensor x) -> Tensor")


def test_custom_op_schema_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"w2v::s3.*schema.*str.*int"):
        jaxops.custom_op("w2v::s3", lambda x: x, mutates_args=(), schema=3)


def test_vmap_rule_returning_the_wrong_batch_size_raises():
    @jaxops.custom_op("w2v::vbs", mutates_args=())
    def v(x: jax.Array) -> jax.Array:
        return x + 1

    @v.register_vmap
    def _(info, in_dims, x):
        return x[:1] + 1, 0

    with pytest.raises(ValueError, match=r"w2v::vbs: the vmap rule returned output leaf 0 with 1 entries.*batch size 2"):
        jax.vmap(v)(jnp.ones((2, 3)))


def test_host_fake_returning_none_for_a_tensor_output_raises():
    op = _host_double("w2v::fnone")
    op.register_fake(lambda x: None)
    with pytest.raises(RuntimeError, match=r"w2v::fnone.*fake.*None"):
        jax.jit(op)(jnp.ones(3))


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


# ---------------------------------------------------------------- 15.6: lib= on functional forms
def test_functional_registrations_with_lib_are_undone_by_destroy():
    @jaxops.custom_op("w2v_lib::h", mutates_args=(), host=True)
    def h(x: jax.Array) -> jax.Array:
        return x * 2

    lib = jaxops.Library("w2v_lib", "FRAGMENT")
    jaxops.register_fake("w2v_lib::h", lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), lib=lib)
    jaxops.register_autograd("w2v_lib::h", lambda ctx, g: 3 * g, lib=lib)
    jaxops.register_vmap("w2v_lib::h", lambda info, in_dims, x: (h(x), in_dims[0]), lib=lib)
    jaxops.register_kernel("w2v_lib::h", "cpu", lambda x: x * 5, lib=lib)
    x = jnp.ones(2)
    assert jax.eval_shape(h, x).shape == (2,)
    np.testing.assert_allclose(jax.grad(lambda v: h(v).sum())(x), [3.0, 3.0])
    lib._destroy()
    with pytest.raises(RuntimeError, match="no fake impl"):
        jax.eval_shape(h, x)
    np.testing.assert_allclose(h(x), [2.0, 2.0])  # the cpu kernel is gone too
    h.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))  # the fake slot is free again
    with jaxops.autograd_fallback_mode("nothing"):
        np.testing.assert_allclose(jax.grad(lambda v: h(v).sum())(x), [0.0, 0.0])


# ------------------------------------------------ 15.7: set_kernel_enabled and get_kernel
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


# ----------------------------------------------------- 15.2: Python numbers from fakes
def test_python_numbers_from_a_fake_follow_x64():
    @jaxops.custom_op("w2v::nfake", mutates_args=(), host=True)
    def n(x: jax.Array) -> jax.Array:
        return np.asarray(x.shape[0])

    n.register_fake(lambda x: 3)
    with jax.enable_x64(True):
        eager = jnp.asarray(n(jnp.ones(3)))
        traced = jax.jit(n)(jnp.ones(3))
        assert traced.dtype == jnp.int64
        assert eager.dtype == traced.dtype
        assert jax.eval_shape(n, jnp.ones(3)).dtype == jnp.int64
    assert jax.jit(n)(jnp.ones(3)).dtype == jnp.int32


# --------------------------------------------------------- 10.2: traced scalars
@pytest.fixture(scope="module")
def scale_add():
    @jaxops.custom_op("w2v::scale_add", mutates_args=())
    def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x + alpha * y

    return scale_add


def test_jit_of_an_op_with_a_scalar_argument(scale_add):
    x, y = jnp.arange(3.0), jnp.ones(3)
    np.testing.assert_allclose(jax.jit(scale_add)(x, y, 2.0), [2.0, 3.0, 4.0])
    np.testing.assert_allclose(jax.jit(lambda a: scale_add(x, y, a))(3.0), [3.0, 4.0, 5.0])
    np.testing.assert_allclose(jax.grad(lambda a: scale_add(x, y, a).sum())(2.0), 3.0)


def test_traced_scalars_reach_host_kernels_as_numpy_scalars():
    seen = []

    @jaxops.custom_op("w2v::hscale", mutates_args=(), host=True)
    def hscale(x: jax.Array, alpha: float) -> jax.Array:
        seen.append(type(alpha))
        return x * alpha

    hscale.register_fake(lambda x, alpha: jax.ShapeDtypeStruct(x.shape, x.dtype))
    np.testing.assert_allclose(jax.jit(hscale)(jnp.ones(2), 4.0), [4.0, 4.0])
    assert seen and issubclass(seen[-1], np.generic)


@jaxops.custom_op("w2v::scale_add_v", mutates_args=())
def _scale_add_v(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
    return x + alpha * y


class TestScalarsUnderChexVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True, with_device=True)
    def test_scale_add(self):
        f = self.variant(_scale_add_v)
        np.testing.assert_allclose(f(jnp.arange(3.0), jnp.ones(3), 2.0), [2.0, 3.0, 4.0])


def test_a_static_parameter_given_a_tracer_names_static_argnums():
    @jaxops.custom_op("w2v::rep", mutates_args=())
    def rep(x: jax.Array, n: int) -> jax.Array:
        return jnp.tile(x, n)

    with pytest.raises(TypeError, match=r"w2v::rep.*'n'.*static_argnums"):
        jax.jit(rep)(jnp.ones(2), 3)
    np.testing.assert_allclose(jax.jit(rep, static_argnums=1)(jnp.ones(2), 3), np.ones(6))


# ----------------------------------------------------- 10.3: per-example host fallback warns once
def test_host_op_vmapped_without_a_rule_warns_once_naming_register_vmap():
    op = _host_double("w2v::novmap")
    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    xs = jnp.ones((4, 3))
    with pytest.warns(UserWarning, match=r"w2v::novmap.*register_vmap.*vmap_method"):
        np.testing.assert_allclose(jax.vmap(op)(xs), 2 * xs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.vmap(op)(xs + 1)  # once per op


def test_host_op_inside_an_equinox_mlp_warns():
    op = _host_double("w2v::act")
    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    mlp = eqx.nn.MLP(3, 2, 4, 1, activation=op, key=jax.random.key(0))
    with pytest.warns(UserWarning, match="register_vmap"):
        jax.vmap(mlp)(jnp.ones((5, 3)))


# ------------------------------------------- 16.7: errors from bodies, fakes and backwards name the op
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


# ------------------------------------- 15.13: forward mode through an op whose backward is host code
def test_forward_mode_error_for_an_op_says_what_to_do_without_internals():
    @jaxops.custom_op("w2v::hb", mutates_args=(), host=True)
    def hb(x: jax.Array) -> jax.Array:
        return np.sin(x)

    hb.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * jax.pure_callback(np.cos, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    hb.register_autograd(backward, setup_context=setup)

    @hb.register_vmap
    def _(info, in_dims, x):
        return hb(x), in_dims[0]

    xs = jnp.ones((2, 3))
    with pytest.raises(NotImplementedError, match=r"Trying to use forward AD with w2v::hb that does not support it") as info:
        jax.vmap(lambda v: jax.jvp(hb, (v,), (v,)))(xs)
    text = str(info.value)
    assert "write that backward in jax.numpy" in text
    assert "Define jvp" not in text and "custom_vmap_call" not in text and "Transpose rule" not in text
    np.testing.assert_allclose(jax.grad(lambda v: hb(v).sum())(xs[0]), np.cos(1.0) * np.ones(3), rtol=1e-6)
