"""``custom_vjp.Function`` under jit, checkpoint, scan and a vjp returned from jit.

The ctx travels as residual arrays plus static data; a Python side channel would
leak tracers in exactly these cases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from custom_vjp import Function

X = jnp.array([0.1, 0.2, 0.3], dtype=jnp.float32)


class Rich(Function):
    """Saves an input, an output, an array attribute and Python attributes."""

    @staticmethod
    def forward(x, k):
        return jnp.exp(x) * k, jnp.argmax(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, k = inputs
        y, idx = output
        ctx.save_for_backward(x, y)
        ctx.k = k
        ctx.cos = jnp.cos(x)
        ctx.meta = {"name": "rich", "sizes": [1, 2]}
        ctx.mark_non_differentiable(idx)

    @staticmethod
    def backward(ctx, g, gidx):
        x, y = ctx.saved_tensors
        assert ctx.meta == {"name": "rich", "sizes": [1, 2]}
        assert gidx.dtype == jnp.int32
        return g * y + 0.0 * ctx.cos, None


def loss(x):
    y, _ = Rich.apply(x, 2.0)
    return jnp.sum(y * x)


def want(x):
    return jax.grad(lambda x: jnp.sum(2.0 * jnp.exp(x) * x))(x)


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda f: f, id="eager"),
        pytest.param(jax.jit, id="jit"),
        pytest.param(lambda f: jax.jit(jax.checkpoint(f)), id="jit-checkpoint"),
        pytest.param(jax.checkpoint, id="checkpoint"),
        pytest.param(
            lambda f: jax.checkpoint(f, policy=jax.checkpoint_policies.nothing_saveable),
            id="checkpoint-nothing-saveable",
        ),
    ],
)
def test_grad_under_transforms(transform):
    np.testing.assert_allclose(jax.grad(transform(loss))(X), want(X), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(transform(loss)))(X), want(X), rtol=1e-6)


def test_grad_inside_scan():
    def body(carry, x):
        y, _ = Rich.apply(x, 2.0)
        return carry + jnp.sum(y * x), y

    def f(xs):
        total, ys = lax.scan(body, 0.0, xs)
        return total + ys.sum()

    xs = jnp.stack([X, 2 * X])
    ref = jax.grad(lambda xs: jnp.sum(2 * jnp.exp(xs) * xs) + jnp.sum(2 * jnp.exp(xs)))(xs)
    np.testing.assert_allclose(jax.grad(f)(xs), ref, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(xs), ref, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(jax.checkpoint(f))(xs), ref, rtol=1e-6)


def test_scan_of_checkpointed_function():
    def body(carry, x):
        return carry + jax.checkpoint(loss)(x), None

    xs = jnp.stack([X, 2 * X])
    np.testing.assert_allclose(
        jax.grad(lambda xs: lax.scan(body, 0.0, xs)[0])(xs), jnp.stack([want(X), want(2 * X)]), rtol=1e-6
    )


def test_vjp_returned_from_jit():
    out, vjp_fn = jax.jit(lambda x: jax.vjp(lambda x: Rich.apply(x, 2.0)[0], x))(X)
    np.testing.assert_allclose(out, 2 * jnp.exp(X), rtol=1e-6)
    (g,) = vjp_fn(jnp.ones(3))
    np.testing.assert_allclose(g, 2 * jnp.exp(X), rtol=1e-6)
    (g2,) = vjp_fn(2 * jnp.ones(3))  # a vjp may be called again
    np.testing.assert_allclose(g2, 4 * jnp.exp(X), rtol=1e-6)
    (g3,) = jax.jit(vjp_fn)(jnp.ones(3))
    np.testing.assert_allclose(g3, 2 * jnp.exp(X), rtol=1e-6)


def test_vmap_of_grad_and_second_order_with_rich_ctx():
    xs = jnp.stack([X, 2 * X])
    np.testing.assert_allclose(jax.vmap(jax.grad(loss))(xs), jax.vmap(want)(xs), rtol=1e-6)
    h = jax.hessian(loss)(X)
    ref = jax.hessian(lambda x: jnp.sum(2.0 * jnp.exp(x) * x))(X)
    np.testing.assert_allclose(h, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        jax.grad(lambda x: jax.grad(loss)(x).sum())(X), ref.sum(0), rtol=1e-5, atol=1e-6
    )


def test_forward_mode_under_checkpoint_and_scan():
    f = jax.checkpoint(lambda x: Rich.apply(x, 2.0)[0])
    _, t = jax.jvp(f, (X,), (jnp.ones(3),))
    np.testing.assert_allclose(t, 2 * jnp.exp(X), rtol=1e-6)
    _, t2 = jax.jvp(lambda xs: lax.scan(lambda c, x: (c, Rich.apply(x, 2.0)[0]), 0.0, xs)[1],
                    (jnp.stack([X, X]),), (jnp.ones((2, 3)),))
    np.testing.assert_allclose(t2, 2 * jnp.exp(jnp.stack([X, X])), rtol=1e-6)


def test_eval_shape_and_plain_jit_run_forward_only():
    calls = []

    class Spy(Function):
        @staticmethod
        def forward(x):
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            calls.append("setup")

        @staticmethod
        def backward(ctx, g):
            calls.append("backward")
            return 2 * g

    s = jax.eval_shape(Spy.apply, jax.ShapeDtypeStruct((4,), jnp.float32))
    assert s.shape == (4,) and s.dtype == jnp.float32
    jax.jit(Spy.apply)(X)
    jax.checkpoint(Spy.apply)(X)
    assert calls == []


def test_materialize_false_under_checkpoint_and_scan():
    seen = []

    class Two(Function):
        @staticmethod
        def forward(x):
            return x * 2, x * 3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.set_materialize_grads(False)

        @staticmethod
        def backward(ctx, g1, g2):
            seen.append(g2 is None)
            return 2 * g1

    g = jax.grad(jax.checkpoint(lambda x: Two.apply(x)[0].sum()))(X)
    np.testing.assert_allclose(g, 2.0)
    g = jax.grad(lambda xs: lax.scan(lambda c, x: (c + Two.apply(x)[0].sum(), None), 0.0, xs)[0])(
        jnp.stack([X, X])
    )
    np.testing.assert_allclose(g, 2.0)
    assert seen and all(seen)
