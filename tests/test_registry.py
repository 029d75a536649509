"""Registration invalidates exactly the JAX traces that used the op (issue 16.1).

Defining or redefining an op must not recompile jitted functions that never
traced it, while a jitted function that did trace it must run the new
definition.  Counts come from ``jaxops.compile_counter`` (per function name), so
every jitted function here has its own name.
"""

from __future__ import annotations

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops import registry

X = jnp.ones(4, jnp.float32)


def _define_scale(k: float, name: str = "regtest::scale"):
    @jaxops.custom_op(name, mutates_args=())
    def scale(x: jax.Array) -> jax.Array:
        return x * k

    return scale


def test_redefinition_recompiles_users_only_and_they_run_the_new_definition():
    _define_scale(2.0)

    @jax.jit
    def reg_uses(v):
        return jaxops.ops.regtest.scale(v) + 1

    @jax.jit
    def reg_unrelated(v):
        return jnp.tanh(v) + 1

    np.testing.assert_allclose(reg_uses(X), 3.0)
    reg_unrelated(X)
    with jaxops.compile_counter() as c:
        for k in (3.0, 4.0, 5.0):
            _define_scale(k)
            np.testing.assert_allclose(reg_uses(X), k + 1)
            reg_unrelated(X)
    assert c.compiles["reg_unrelated"] == 0
    assert c.traces["reg_unrelated"] == 0
    assert c.compiles["reg_uses"] == 3


def test_defining_new_ops_recompiles_nothing():
    scale = _define_scale(2.0)

    @jax.jit
    def reg_uses_scale(v):
        return jaxops.ops.regtest.scale(v)

    @jax.jit
    def reg_plain(v):
        return v * 3

    reg_uses_scale(X)
    reg_plain(X)
    scale(X)  # the op's own eager jit
    with jaxops.compile_counter() as c:
        for i in range(3):
            fresh = _define_scale(float(i), name=f"regtest::fresh{i}")
            fresh.register_kernel("cpu")(lambda x: x - 1)
            reg_uses_scale(X)
            reg_plain(X)
            np.testing.assert_allclose(scale(X), 2.0)
    assert c.compiles["reg_uses_scale"] == 0
    assert c.compiles["reg_plain"] == 0
    assert c.compiles["regtest::scale"] == 0


def test_nested_jit_traced_before_its_caller_is_invalidated():
    _define_scale(2.0)

    @jax.jit
    def reg_inner(v):
        return jaxops.ops.regtest.scale(v)

    reg_inner(X)  # cached first: the caller's trace reuses it without calling the op

    @jax.jit
    def reg_outer(v):
        return reg_inner(v) * 10

    np.testing.assert_allclose(reg_outer(X), 20.0)
    _define_scale(7.0)
    np.testing.assert_allclose(reg_outer(X), 70.0)
    np.testing.assert_allclose(reg_inner(X), 7.0)


def test_cached_traces_of_eval_shape_scan_and_checkpoint_follow_redefinition():
    _define_scale(2.0)

    def body(carry, v):
        return carry + jnp.sum(jaxops.ops.regtest.scale(v)), None

    @jax.jit
    def reg_scan(v):
        return jax.lax.scan(body, jnp.float32(0), jnp.stack([v, v]))[0]

    def shape_fn(v):
        return jaxops.ops.regtest.scale(v)

    remat = jax.checkpoint(lambda v: jnp.sum(jaxops.ops.regtest.scale(v)))
    reg_grad = jax.jit(jax.grad(remat))
    np.testing.assert_allclose(reg_scan(X), 16.0)
    assert jax.eval_shape(shape_fn, X).shape == (4,)
    np.testing.assert_allclose(reg_grad(X), 2.0)

    @jaxops.custom_op("regtest::scale", mutates_args=())
    def scale(x: jax.Array) -> jax.Array:
        return jnp.concatenate([x, x]) * 3.0  # a new output shape too

    np.testing.assert_allclose(reg_scan(X), 48.0)
    assert jax.eval_shape(shape_fn, X).shape == (8,)
    np.testing.assert_allclose(reg_grad(X), 6.0)


def test_registering_on_the_same_op_reaches_jitted_users():
    op = _define_scale(2.0)

    @jax.jit
    def reg_kernel_user(v):
        return op(v)

    np.testing.assert_allclose(reg_kernel_user(X), 2.0)
    op.register_kernel(jax.devices()[0].platform)(lambda x: x * 9.0)  # the platform X lives on
    np.testing.assert_allclose(reg_kernel_user(X), 9.0)


def test_library_define_and_destroy():
    lib = jaxops.Library("regtestlib", "DEF")
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: 2 * x, "default")

    @jax.jit
    def reg_lib_user(v):
        return jaxops.ops.regtestlib.twice(v)

    @jax.jit
    def reg_lib_unrelated(v):
        return v - 1

    np.testing.assert_allclose(reg_lib_user(X), 2.0)
    reg_lib_unrelated(X)
    with jaxops.compile_counter() as c:
        lib._destroy()
        with pytest.raises(AttributeError, match="no op named 'regtestlib::twice'"):
            reg_lib_user(X)  # retraced: the op is gone
        lib2 = jaxops.Library("regtestlib", "DEF")
        lib2.define("twice(Tensor x) -> Tensor")
        lib2.impl("twice", lambda x: 5 * x, "default")
        np.testing.assert_allclose(reg_lib_user(X), 5.0)
        reg_lib_unrelated(X)
    lib2._destroy()
    assert c.compiles["reg_lib_unrelated"] == 0


def test_records_hold_jitted_functions_weakly():
    _define_scale(2.0)

    def reg_weak(v):
        return jaxops.ops.regtest.scale(v)

    ref = weakref.ref(reg_weak)
    jitted = jax.jit(reg_weak)
    jitted(X)
    assert ref() in registry._DEPENDENTS["regtest::scale"]
    del jitted, reg_weak
    gc.collect()
    assert ref() is None


def test_bump_epoch_without_an_op_invalidates_every_trace():
    @jax.jit
    def reg_all(v):
        return v + 2

    reg_all(X)
    with jaxops.compile_counter() as c:
        registry.bump_epoch()
        reg_all(X)
    assert c.compiles["reg_all"] == 1


def test_middle_jit_traced_only_inside_another_reuses_a_cached_inner_trace():
    _define_scale(2.0)

    @jax.jit
    def reg_leaf(v):
        return jaxops.ops.regtest.scale(v)

    reg_leaf(X)  # cached first

    @jax.jit
    def reg_middle(v):  # only ever traced inside reg_top, reusing reg_leaf's trace
        return reg_leaf(v) + 1

    @jax.jit
    def reg_top(v):
        return reg_middle(v) * 10

    np.testing.assert_allclose(reg_top(X), 30.0)
    _define_scale(7.0)
    np.testing.assert_allclose(reg_top(X), 80.0)
