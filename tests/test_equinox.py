"""Equinox + Optax end to end: a Module built from jaxops ops trains, compiles once, matches its twin."""

from __future__ import annotations

import sys
from pathlib import Path

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest

import jaxops

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples import equinox_model as em  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return em.make_data(jax.random.key(1))


@pytest.mark.parametrize("activation", ["host", "jax"])
def test_gradients_equal_the_plain_jax_twin(data, activation):
    x, y = data
    model = em.make_model(jax.random.key(0), activation=activation)
    grads = eqx.filter_jit(eqx.filter_grad(em.loss_fn))(model, x, y)
    plain = eqx.filter_jit(eqx.filter_grad(em.loss_fn))(em.twin(model), x, y)
    chex.assert_trees_all_close(
        (grads.l1.w, grads.l1.b, grads.norm, grads.l2.w, grads.l2.b),
        (plain.l1.w, plain.l1.b, plain.norm, plain.l2.w, plain.l2.b),
        rtol=1e-5,
        atol=1e-5,
    )
    chex.assert_trees_all_close(em.loss_fn(model, x, y), em.loss_fn(em.twin(model), x, y), rtol=1e-6)


def test_the_function_backward_gives_the_module_gradient(data):
    x, _ = data
    scale = em.Scale(jnp.linspace(0.5, 1.5, 8), jnp.zeros(8))
    g = jax.grad(lambda s: (em.Norm.apply(s, x) ** 2).sum())(scale)
    assert isinstance(g, em.Scale) and g.eps == scale.eps

    def plain(s):
        mu = x.mean(-1, keepdims=True)
        xhat = (x - mu) * jax.lax.rsqrt(((x - mu) ** 2).mean(-1, keepdims=True) + s.eps)
        return ((xhat * s.gamma + s.beta) ** 2).sum()

    chex.assert_trees_all_close(g, jax.grad(plain)(scale), rtol=1e-5, atol=1e-5)


def test_optax_training_loss_falls_and_compiles_once(data):
    x, y = data
    model = em.make_model(jax.random.key(0))
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    step = em.make_step(optimizer)
    losses = []
    with jaxops.compile_counter() as counter:
        for _ in range(40):
            model, opt_state, loss = step(model, opt_state, x, y)
            losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    assert counter.compiles["step"] == 1
    assert counter.traces["step"] == 1


def test_training_matches_the_twin_step_for_step(data):
    x, y = data
    model = em.make_model(jax.random.key(0))
    plain = em.twin(model)
    optimizer = optax.sgd(0.1)
    step = em.make_step(optimizer)
    s1 = optimizer.init(eqx.filter(model, eqx.is_array))
    s2 = optimizer.init(eqx.filter(plain, eqx.is_array))
    for _ in range(5):
        model, s1, l1 = step(model, s1, x, y)
        plain, s2, l2 = step(plain, s2, x, y)
        chex.assert_trees_all_close(l1, l2, rtol=1e-5)
    chex.assert_trees_all_close((model.l1.w, model.l2.w), (plain.l1.w, plain.l2.w), rtol=1e-4, atol=1e-5)


def test_plan_attributes_records_to_layers(data):
    x, y = data
    model = em.make_model(jax.random.key(0))
    p = jaxops.plan(eqx.filter_grad(em.loss_fn), model, x, y)
    scopes = p.by_scope()
    assert any("l1" in s for s in scopes) and any("l2" in s for s in scopes)
    phases = {r["phase"] for r in p.records}
    assert phases == {"forward", "backward"}
    assert p.peak_bytes > 0
