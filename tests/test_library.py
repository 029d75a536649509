"""jaxops.library: Library, define, impl, overloads (API.md §8)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import on_cpu

import jaxops

X = jnp.array([3.0, 1.0, 2.0])
XC = on_cpu(X)  # committed to the CPU: tests of CPU kernels pin their arrays there


# ----------------------------------------------------------------- Library
def test_library_define_impl_meta_destroy():
    lib = jaxops.Library("t_lib", "DEF")
    try:
        assert lib.define("foo(Tensor x, int y=2) -> Tensor") == "t_lib::foo"
        lib.impl("foo", lambda x, y: x * y, "default")
        np.testing.assert_allclose(jaxops.ops.t_lib.foo(XC), X * 2)
        lib.impl("foo", lambda x, y: x * y + 1, "cpu")
        np.testing.assert_allclose(jaxops.ops.t_lib.foo(XC, 3), X * 3 + 1)  # platform wins over default
        lib.define("hfoo(Tensor x) -> Tensor")
        lib.impl("hfoo", lambda x: np.cos(x), "cpu", host=True)
        lib.impl("hfoo", lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), "Meta")
        np.testing.assert_allclose(jax.jit(jaxops.ops.t_lib.hfoo)(XC), np.cos(X), rtol=1e-6)
        lib.define("cia(Tensor x) -> Tensor")
        lib.impl("cia", lambda x: jnp.sin(x), "CompositeImplicitAutograd")
        np.testing.assert_allclose(jax.grad(lambda x: jaxops.ops.t_lib.cia(x).sum())(X), jnp.cos(X), rtol=1e-6)
        with pytest.raises(ValueError, match="dispatch key"):
            lib.impl("foo", lambda x, y: x, "NPU")
        with pytest.raises(RuntimeError, match="already has a DEF library"):
            jaxops.Library("t_lib", "DEF")
        frag = jaxops.Library("t_lib", "FRAGMENT")
        frag.define("bar(Tensor x) -> Tensor")
        impl_lib = jaxops.Library("t_lib", "IMPL")
        impl_lib.impl("bar", lambda x: -x, "default")
        np.testing.assert_allclose(jaxops.ops.t_lib.bar(X), -X)
        with pytest.raises(RuntimeError, match="cannot define"):
            impl_lib.define("baz(Tensor x) -> Tensor")
        frag._destroy()
        with pytest.raises(AttributeError):
            jaxops.ops.t_lib.bar  # noqa: B018
    finally:
        lib._destroy()
    with pytest.raises(AttributeError):
        jaxops.ops.t_lib.foo  # noqa: B018
    with pytest.raises(ValueError, match="kind"):
        jaxops.Library("t_lib", "BOGUS")


def test_define_and_impl_functions():
    lib = jaxops.Library("t_def", "FRAGMENT")
    try:
        op = jaxops.define("t_def::neg", "(Tensor x) -> Tensor", lib=lib)
        jaxops.impl("t_def::neg", "default", lambda x: -x, lib=lib)
        np.testing.assert_allclose(op(XC), -X)

        @jaxops.impl("t_def::neg", "cpu", lib=lib)
        def _(x):
            return -2 * x

        np.testing.assert_allclose(jaxops.ops.t_def.neg(XC), -2 * X)
    finally:
        lib._destroy()


@pytest.mark.parametrize(
    "schema, exc, message",
    [
        ("foo(int64_t x) -> Tensor", (ValueError, RuntimeError), "Use `SymInt` or `int`"),
        ("foo(double x) -> Tensor", (ValueError, RuntimeError), "Use `float`"),
        ("foo(Tensor x -> Tensor", (ValueError, RuntimeError), "position"),
    ],
)
def test_malformed_schema(schema, exc, message):
    lib = jaxops.Library("t_bad", "FRAGMENT")
    try:
        with pytest.raises(exc, match=message):
            lib.define(schema)
    finally:
        lib._destroy()


def test_overloads_resolve_and_report_mismatch():
    lib = jaxops.Library("t_ov", "FRAGMENT")
    try:
        lib.define("add(Tensor x, Tensor y) -> Tensor")
        lib.define("add.scalar(Tensor x, float y) -> Tensor")
        lib.impl("add", lambda x, y: x + y, "default")
        lib.impl("add.scalar", lambda x, y: x + 10 * y, "default")
        ops = jaxops.ops.t_ov.add
        np.testing.assert_allclose(ops(X, X), 2 * X)
        np.testing.assert_allclose(ops(X, 1.0), X + 10)
        np.testing.assert_allclose(ops.scalar(X, 2.0), X + 20)
        np.testing.assert_allclose(ops.default(X, X), 2 * X)
        with pytest.raises(TypeError, match="failed to match any schema"):
            ops(X, "nope")
    finally:
        lib._destroy()


def test_library_arguments_torch_exposes_are_stored_or_rejected():
    lib = jaxops.Library("t_libargs", "DEF")
    try:
        qual = lib.define("relu(Tensor x) -> Tensor", alias_analysis="FROM_SCHEMA", tags=(jaxops.Tag.pointwise,))
        assert jaxops.ops.t_libargs.relu.default.tags == (jaxops.Tag.pointwise,)
        with pytest.raises(ValueError, match=r"t_libargs::other: Library.define\(alias_analysis='CONSERVATIVE'\) is not supported"):
            lib.define("other(Tensor x) -> Tensor", alias_analysis="CONSERVATIVE")
        with pytest.raises(ValueError, match=r"t_libargs::tagged: tags must be jaxops.Tag members"):
            lib.define("tagged(Tensor x) -> Tensor", tags=("pointwise",))
        with pytest.raises(NotImplementedError, match=r"t_libargs::relu: Library.impl\(with_keyset=True\) is not supported"):
            lib.impl(qual, lambda ks, x: x, "cpu", with_keyset=True)
    finally:
        lib._destroy()


def _host_double(name: str):
    @jaxops.custom_op(name, mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        return x * 2

    return op


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


def test_define_with_a_mismatched_schema_name_is_refused():
    with pytest.raises(ValueError, match=r"w2v::g1.*'g2'"):
        jaxops.define("w2v::g1", "g2(Tensor x) -> Tensor")


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
