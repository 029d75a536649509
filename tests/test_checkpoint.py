"""Tests for ``custom_vjp.checkpoint``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from custom_vjp import checkpoint, grad_hook
from custom_vjp.checkpoint import POLICY_NAMES


def _block(w, x):
    return jnp.tanh(w @ x) * jnp.sin(x)


def _reference_grad(w, x):
    return jax.grad(lambda w: _block(w, x).sum())(w)


W = jnp.arange(9.0).reshape(3, 3) / 10
X = jnp.array([0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    "policy",
    [None, *POLICY_NAMES, jax.checkpoint_policies.dots_saveable, jax.checkpoint_policies.nothing_saveable],
)
def test_gradients_equal_uncheckpointed(policy):
    f = checkpoint(_block, policy=policy)
    np.testing.assert_allclose(f(W, X), _block(W, X))
    np.testing.assert_allclose(jax.grad(lambda w: f(w, X).sum())(W), _reference_grad(W, X), rtol=1e-6)
    np.testing.assert_allclose(
        jax.jit(jax.grad(lambda w: f(w, X).sum()))(W), _reference_grad(W, X), rtol=1e-6
    )


def test_recomputes_in_backward():
    f = checkpoint(lambda x: jnp.sin(jnp.sin(x)))
    jaxpr = jax.make_jaxpr(jax.grad(lambda x: f(x).sum()))(jnp.ones(2))
    assert "remat" in str(jaxpr) or "checkpoint" in str(jaxpr)


def test_decorator_forms():
    @checkpoint
    def a(x):
        return x * x

    @checkpoint(policy="everything_saveable")
    def b(x):
        return x * x

    for f in (a, b):
        np.testing.assert_allclose(jax.grad(lambda x, f=f: f(x).sum())(jnp.ones(2)), [2.0, 2.0])


def test_static_argnums():
    f = checkpoint(lambda x, n: x**n, static_argnums=(1,))
    np.testing.assert_allclose(jax.grad(lambda x: f(x, 3).sum())(jnp.full(2, 2.0)), [12.0, 12.0])


def test_bad_policy_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown policy 'save_all'.*nothing_saveable, everything_saveable, dots_saveable"):
        checkpoint(_block, policy="save_all")


def test_bad_policy_type():
    with pytest.raises(TypeError, match="policy must be None, a policy name string"):
        checkpoint(_block, policy=3)


def test_non_callable_fn():
    with pytest.raises(TypeError, match="fn must be callable"):
        checkpoint(5)


def test_grad_hook_inside():
    f = checkpoint(lambda x: grad_hook(jnp.sin(x), lambda g: g * 2))
    g = jax.jit(jax.grad(lambda x: f(x).sum()))(jnp.zeros(2))
    np.testing.assert_allclose(g, [2.0, 2.0])


def test_under_scan_and_vmap():
    f = checkpoint(lambda c, x: (jnp.sin(c) * x, None))

    def loss(c0):
        return jax.lax.scan(f, c0, jnp.arange(1.0, 4.0))[0].sum()

    def ref(c0):
        return jax.lax.scan(lambda c, x: (jnp.sin(c) * x, None), c0, jnp.arange(1.0, 4.0))[0].sum()

    c0 = jnp.array([0.3, 0.5])
    np.testing.assert_allclose(jax.grad(loss)(c0), jax.grad(ref)(c0), rtol=1e-6)
    np.testing.assert_allclose(
        jax.vmap(jax.grad(loss))(jnp.stack([c0, c0 * 2])),
        jax.vmap(jax.grad(ref))(jnp.stack([c0, c0 * 2])),
        rtol=1e-6,
    )


def test_forward_mode_works():
    f = checkpoint(jnp.sin)
    _, t = jax.jvp(f, (jnp.zeros(2),), (jnp.ones(2),))
    np.testing.assert_allclose(t, [1.0, 1.0])
