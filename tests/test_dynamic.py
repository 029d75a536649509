"""Data-dependent output sizes: new_dynamic_size in fakes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops import dynamic

_FAKE_RUNS: list[Any] = []


@jaxops.custom_op("dyn_t::nonzero", mutates_args=(), host=True)
def nonzero(x: jax.Array) -> jax.Array:
    return np.stack(np.nonzero(x), axis=1).astype(np.int32)


@nonzero.register_fake
def _(x: Any) -> Any:
    _FAKE_RUNS.append(x.shape)
    n = jaxops.get_ctx().new_dynamic_size(min=0, max=x.size if isinstance(x.size, int) else None)
    return jax.ShapeDtypeStruct((n, x.ndim), jnp.int32)


@jaxops.custom_op("dyn_t::unique_and_count", mutates_args=(), host=True)
def unique_and_count(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    u, c = np.unique(x, return_counts=True)
    return u, c.astype(np.int32)


@unique_and_count.register_fake
def _(x: Any) -> Any:
    n = jaxops.get_ctx().new_dynamic_size()
    return jax.ShapeDtypeStruct((n,), x.dtype), jax.ShapeDtypeStruct((n,), jnp.int32)


X = jnp.array([[0.0, 1.0, 0.0], [2.0, 0.0, 3.0]])


def test_eager_returns_the_real_shape_and_runs_the_fake_once_per_signature() -> None:
    # Eager results are checked against the fake (a dynamic dim matches any size); the
    # fake's answer is cached per input signature, so it never runs once per call.
    _FAKE_RUNS.clear()
    out = nonzero(X)
    assert out.shape == (3, 2) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out, np.stack(np.nonzero(np.asarray(X)), axis=1))
    assert nonzero(X * 0).shape == (0, 2)
    assert nonzero(jnp.zeros(4)).shape == (0, 1)
    assert nonzero(jnp.ones(4)).shape == (4, 1)
    assert _FAKE_RUNS == [(2, 3), (4,)]
    u, c = unique_and_count(jnp.array([3.0, 1.0, 3.0]))
    assert u.tolist() == [1.0, 3.0] and c.tolist() == [1, 2]


def test_eval_shape_gives_a_symbolic_dimension_named_after_the_op() -> None:
    out = jax.eval_shape(nonzero, X)
    assert str(out.shape[0]) == "dyn_t_nonzero_0" and out.shape[1] == 2 and out.dtype == jnp.int32
    u, c = jax.eval_shape(unique_and_count, jnp.ones(5))
    assert u.shape == c.shape and str(u.shape[0]) == "dyn_t_unique_and_count_0"
    # downstream code can compute with the symbol
    total = jax.eval_shape(lambda x: jnp.concatenate([nonzero(x)[:, 0], nonzero(x)[:, 1]]), X)
    assert str(total.shape[0]) == "2*dyn_t_nonzero_0"


def test_symbolic_inputs_share_a_scope_with_the_dynamic_size() -> None:
    (b,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((b,), jnp.float32)
    out = jax.eval_shape(lambda x: jnp.concatenate([nonzero(x)[:, 0].astype(jnp.float32), x]), spec)
    assert str(out.shape[0]) in ("b + dyn_t_nonzero_0", "dyn_t_nonzero_0 + b")


def test_plan_sees_the_symbolic_size() -> None:
    p = jaxops.plan(lambda x: nonzero(x), jax.ShapeDtypeStruct((2, 3), jnp.float32))
    (rec,) = [r for r in p.records if r["op"] == "dyn_t::nonzero"]
    assert str(rec["outputs"][0].shape[0]) == "dyn_t_nonzero_0"


def test_jit_raises_data_dependent_naming_the_op() -> None:
    with pytest.raises(RuntimeError, match=r"dyn_t::nonzero: .*data-dependent.*Call it eagerly"):
        jax.jit(nonzero)(X)
    with pytest.raises(RuntimeError, match=r"dyn_t::unique_and_count: .*data-dependent"):
        jax.jit(lambda x: unique_and_count(x)[1].sum() + 1)(jnp.ones(3))
    # the process stays usable
    assert nonzero(X).shape == (3, 2)


def test_vmap_and_grad_raise_clearly() -> None:
    with pytest.raises(NotImplementedError, match="dyn_t::nonzero: .*data-dependent.*cannot be vmapped"):
        jax.vmap(nonzero)(jnp.stack([X, X]))
    with jaxops.autograd_fallback_mode("nothing"), pytest.raises(RuntimeError, match="data-dependent"):
        jax.grad(lambda x: unique_and_count(x)[0].sum())(jnp.ones(3))


def test_disable_jit_runs_the_kernel() -> None:
    with jax.disable_jit():
        assert nonzero(X + 0).shape == (3, 2)


def test_min_max_validation() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        dynamic.new_symbolic_size("dyn_t::x", 0, -1, None)
    with pytest.raises(TypeError, match=r"new_dynamic_size\(max=...\) must be an int"):
        dynamic.new_symbolic_size("dyn_t::x", 0, 0, 2.5)
    with pytest.raises(ValueError, match="max must be >= min"):
        dynamic.new_symbolic_size("dyn_t::x", 0, 3, 1)
    assert dynamic.new_symbolic_size("dyn_t::x", 0, 4, 4) == 4  # not dynamic at all
    dim = dynamic.new_symbolic_size("dyn_t::x", 1, 2, 10)
    assert str(dim) == "dyn_t_x_1"

    @jaxops.custom_op("dyn_t::bad", mutates_args=(), host=True)
    def bad(x: jax.Array) -> jax.Array:
        return np.asarray(x)

    @bad.register_fake
    def _(x: Any) -> Any:
        n = jaxops.get_ctx().new_dynamic_size(min=-1)
        return jax.ShapeDtypeStruct((n,), x.dtype)

    with pytest.raises(ValueError, match="greater than or equal to 0"):
        jax.eval_shape(bad, jnp.ones(2))

    @jaxops.custom_op("dyn_t::bad_max", mutates_args=(), host=True)
    def bad_max(x: jax.Array) -> jax.Array:
        return np.asarray(x)

    @bad_max.register_fake
    def _(x: Any) -> Any:
        return jax.ShapeDtypeStruct((jaxops.get_ctx().new_dynamic_size(max="3"),), x.dtype)

    with pytest.raises(TypeError, match="max"):
        jax.eval_shape(bad_max, jnp.ones(2))


def test_symbol_names() -> None:
    assert dynamic.symbol_name("mylib::nonzero", 0) == "mylib_nonzero_0"
    assert dynamic.symbol_name("mylib::f.out", 2) == "mylib_f_out_2"
