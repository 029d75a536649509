"""Tests for ``custom_vjp.detect_anomaly`` and the backward NaN check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import custom_vjp
from custom_vjp import _state
from custom_vjp.anomaly import check_backward_outputs

NAN = jnp.array([1.0, jnp.nan])


def test_detect_anomaly_sets_and_restores_mode():
    assert _state.anomaly_mode.get() is False
    with custom_vjp.detect_anomaly():
        assert _state.anomaly_mode.get() is True
        assert custom_vjp.is_anomaly_enabled()
        with custom_vjp.detect_anomaly(check_nan=False):
            assert not custom_vjp.is_anomaly_enabled()
        assert custom_vjp.is_anomaly_enabled()
    assert not custom_vjp.is_anomaly_enabled()


def test_detect_anomaly_restores_after_exception():
    with pytest.raises(KeyError), custom_vjp.detect_anomaly():
        raise KeyError("x")
    assert not custom_vjp.is_anomaly_enabled()


def test_detect_anomaly_as_decorator_and_reusable():
    da = custom_vjp.detect_anomaly()

    @da
    def inner():
        return custom_vjp.is_anomaly_enabled()

    assert inner() is True
    with da:
        with da:
            assert custom_vjp.is_anomaly_enabled()
    assert not custom_vjp.is_anomaly_enabled()


def test_set_detect_anomaly():
    with custom_vjp.set_detect_anomaly(True):
        assert custom_vjp.is_anomaly_enabled()
    assert not custom_vjp.is_anomaly_enabled()
    with pytest.raises(TypeError, match="mode must be a bool"):
        custom_vjp.set_detect_anomaly(1)
    with pytest.raises(TypeError, match="check_nan must be a bool"):
        custom_vjp.detect_anomaly(check_nan="yes")


def test_check_passes_clean_and_none_grads():
    assert check_backward_outputs("MyFn", (jnp.ones(2), None, [jnp.ones(1)], jnp.arange(2))) is None


def test_check_raises_eagerly_with_index():
    with pytest.raises(RuntimeError, match="Function 'MyFn' returned nan values in its 0th output"):
        check_backward_outputs("MyFn", (NAN, None))
    with pytest.raises(RuntimeError, match="Function 'MyFn' returned nan values in its 2th output"):
        check_backward_outputs("MyFn", (jnp.ones(2), None, NAN, NAN))


def test_check_inside_list_gradient():
    with pytest.raises(RuntimeError, match="returned nan values in its 1th output"):
        check_backward_outputs("ListFn", (None, [jnp.ones(1), NAN]))


def _traced(x):
    check_backward_outputs("Traced", (jnp.ones(2), jnp.log(x)))
    return x * 2


def test_check_under_jit_raises_runtime_error():
    f = jax.jit(_traced)
    jax.block_until_ready(f(jnp.ones(2)))
    with pytest.raises(RuntimeError, match="Function 'Traced' returned nan values in its 1th output"):
        jax.block_until_ready(f(jnp.array([1.0, -1.0])))


def test_check_under_vmap_and_jit_vmap():
    xs = jnp.array([[1.0, 1.0], [1.0, -1.0]])
    with pytest.raises(RuntimeError, match="returned nan values in its 1th output"):
        jax.block_until_ready(jax.vmap(_traced)(xs))
    with pytest.raises(RuntimeError, match="returned nan values in its 1th output"):
        jax.block_until_ready(jax.jit(jax.vmap(_traced))(xs))
    jax.block_until_ready(jax.jit(jax.vmap(_traced))(jnp.ones((2, 2))))


def test_check_inside_custom_vjp_backward_under_jit_grad():
    @jax.custom_vjp
    def f(x):
        return x

    def bwd(_, g):
        grads = (g * jnp.nan,)
        check_backward_outputs("NanBackward", grads)
        return grads

    f.defvjp(lambda x: (x, None), bwd)
    loss = jax.jit(jax.grad(lambda x: f(x).sum()))
    with pytest.raises(RuntimeError, match="Function 'NanBackward' returned nan values in its 0th output"):
        jax.block_until_ready(loss(jnp.ones(2)))
    with pytest.raises(RuntimeError, match="Function 'NanBackward' returned nan values in its 0th output"):
        jax.grad(lambda x: f(x).sum())(jnp.ones(2))


# ----------------------------------------------------------------------------- end to end


class _NanSecond(custom_vjp.Function):
    @staticmethod
    def forward(ctx, x, y):
        return x * y

    @staticmethod
    def backward(ctx, g):
        return g, g * jnp.nan


class _NanFirst(custom_vjp.Function):
    @staticmethod
    def forward(x):
        return jnp.sqrt(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g / (2 * y)  # inf * 0 -> nan at x == 0 when g == 0


def _loss(x):
    return _NanSecond.apply(x, x).sum()


def test_function_nan_backward_raises_eagerly():
    with custom_vjp.detect_anomaly():
        with pytest.raises(RuntimeError, match="Function '_NanSecond' returned nan values in its 1th output"):
            jax.grad(_loss)(jnp.ones(2))


def test_function_nan_backward_raises_under_jit():
    with custom_vjp.detect_anomaly():
        step = jax.jit(jax.grad(lambda x: _loss(x)))
        with pytest.raises(RuntimeError, match="Function '_NanSecond' returned nan values in its 1th output"):
            jax.block_until_ready(step(jnp.ones(2)))


def test_function_nan_only_for_some_inputs_under_jit():
    with custom_vjp.detect_anomaly():
        step = jax.jit(jax.grad(lambda x: jnp.sum(_NanFirst.apply(x) * 0.0)))
        jax.block_until_ready(step(jnp.ones(2)))
        with pytest.raises(RuntimeError, match="Function '_NanFirst' returned nan values in its 0th output"):
            jax.block_until_ready(step(jnp.array([1.0, 0.0])))


def test_without_anomaly_mode_nan_passes_silently():
    g = jax.grad(_loss)(jnp.ones(2))
    assert bool(jnp.isnan(g).all())


def test_mode_is_part_of_the_trace_cache_key():
    def traced_outside(x):
        return jax.grad(_loss)(x)

    step = jax.jit(traced_outside)
    jax.block_until_ready(step(jnp.ones(2)))
    with custom_vjp.detect_anomaly():
        # traced outside the block, but the mode is part of the cache key: traced again
        with pytest.raises(RuntimeError, match="returned nan values in its 1th output"):
            jax.block_until_ready(step(jnp.ones(2)))
    g = step(jnp.ones(2))  # back outside: the unchecked trace again
    assert bool(jnp.isnan(g).all())
