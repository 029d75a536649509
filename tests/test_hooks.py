"""Tests for ``custom_vjp.grad_hook``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from custom_vjp import checkpoint, grad_hook


def test_identity_forward():
    x = jnp.arange(3.0)
    assert np.array_equal(grad_hook(x, lambda g: g * 100), x)
    assert np.array_equal(jax.jit(lambda x: grad_hook(x, lambda g: g * 100))(x), x)


def test_scales_cotangent_eagerly_and_under_jit():
    def loss(x):
        return jnp.sum(grad_hook(x, lambda g: g * 10.0) ** 2)

    x = jnp.array([1.0, 2.0])
    np.testing.assert_allclose(jax.grad(loss)(x), [20.0, 40.0])
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), [20.0, 40.0])


def test_none_keeps_gradient_and_hook_sees_cotangent():
    seen = []

    def hook(g):
        seen.append(g.shape)
        return None

    g = jax.grad(lambda x: jnp.sum(3.0 * grad_hook(x, hook)))(jnp.ones(4))
    np.testing.assert_allclose(g, 3.0)
    assert seen[-1] == (4,)


def test_hook_not_called_without_gradient_flow():
    def loss(x):
        y = grad_hook(x, lambda g: g * 0 + 1e6)
        del y
        return jnp.sum(x)

    np.testing.assert_allclose(jax.grad(loss)(jnp.ones(2)), [1.0, 1.0])


def test_clip_under_jit_value_and_grad():
    step = jax.jit(jax.value_and_grad(lambda x: jnp.sum(5.0 * grad_hook(x, lambda g: jnp.clip(g, -1, 1)))))
    v, g = step(jnp.ones(3))
    assert float(v) == 15.0
    np.testing.assert_allclose(g, 1.0)


def test_closure_over_traced_value_under_jit():
    @jax.jit
    def f(x, s):
        return jax.grad(lambda x: jnp.sum(grad_hook(x, lambda g: g * s)))(x)

    np.testing.assert_allclose(f(jnp.ones(2), 7.0), [7.0, 7.0])


def test_closure_over_scan_value():
    def loss(x):
        def body(c, s):
            return grad_hook(c, lambda g: g * s), None

        return jax.lax.scan(body, x, jnp.arange(1.0, 4.0))[0].sum()

    np.testing.assert_allclose(jax.grad(loss)(jnp.ones(2)), [6.0, 6.0])
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(jnp.ones(2)), [6.0, 6.0])


def test_inside_checkpoint_with_closure():
    block = checkpoint(lambda x: grad_hook(x, lambda g: g * x) * 2)
    np.testing.assert_allclose(jax.grad(lambda x: block(x).sum())(jnp.arange(3.0)), [0.0, 2.0, 4.0])


def test_vmap_of_grad():
    f = jax.vmap(jax.grad(lambda x: jnp.sum(grad_hook(x, lambda g: g * x))))
    np.testing.assert_allclose(f(jnp.arange(6.0).reshape(2, 3)), np.arange(6.0).reshape(2, 3))


def test_second_order():
    h = jax.hessian(lambda x: jnp.sum(grad_hook(x, lambda g: 3 * g) ** 3))(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(h, np.diag([18.0, 36.0]))


def test_pytree_applies_per_leaf_and_skips_integers():
    def loss(p):
        q = grad_hook(p, lambda g: g * 2)
        return jnp.sum(q["w"] * q["b"]) + q["n"].sum()

    p = {"w": jnp.ones(2), "b": jnp.full(2, 3.0), "n": jnp.arange(2)}
    g = jax.grad(loss, allow_int=True)(p)
    np.testing.assert_allclose(g["w"], [6.0, 6.0])
    np.testing.assert_allclose(g["b"], [2.0, 2.0])
    assert np.array_equal(grad_hook(jnp.arange(3), lambda g: g * 2), np.arange(3))


def test_wrong_shape_raises_value_error():
    with pytest.raises(ValueError, match=r"returned a gradient of shape \(\), expected shape \(3,\)"):
        jax.grad(lambda x: grad_hook(x, lambda g: g.sum()).sum())(jnp.ones(3))


def test_wrong_dtype_raises_type_error():
    with pytest.raises(TypeError, match="has changed the type of value"):
        jax.grad(lambda x: grad_hook(x, lambda g: g.astype(jnp.float16)).sum())(jnp.ones(3))


def test_non_callable_raises_type_error():
    with pytest.raises(TypeError, match="fn must be callable"):
        grad_hook(jnp.ones(2), 3)


def test_forward_mode_is_rejected_by_jax():
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(lambda x: grad_hook(x, lambda g: g), (jnp.ones(2),), (jnp.ones(2),))
