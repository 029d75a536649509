"""jaxops.autograd: register_autograd (API.md §4: setup_context, backward, both AD modes, transforms) and the fallback of host ops with no formula."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops

X = jnp.array([0.1, 0.7, 1.3])


@pytest.fixture
def hsin():
    calls = {"setup": 0, "backward": 0}

    @jaxops.custom_op("t_ag::hsin", mutates_args=(), host=True)
    def hsin(x: jax.Array) -> jax.Array:
        return np.sin(x)

    hsin.register_fake(lambda x: x)

    def setup_context(ctx, inputs, output):
        calls["setup"] += 1
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.label = "sin"
        ctx.out = output

    def backward(ctx, g):
        calls["backward"] += 1
        (x,) = ctx.saved_tensors
        assert ctx.label == "sin"
        return g * jnp.cos(x)

    hsin.register_autograd(backward, setup_context=setup_context)
    hsin.calls = calls
    return hsin


def loss(op):
    return lambda x: (op(x) ** 2).sum()


def ref_loss(x):
    return (jnp.sin(x) ** 2).sum()


def test_grad_calls_user_backward(hsin):
    g = jax.grad(loss(hsin))(X)
    np.testing.assert_allclose(g, jax.grad(ref_loss)(X), rtol=1e-5)
    assert hsin.calls["backward"] == 1 and hsin.calls["setup"] == 1


def test_plain_call_and_jit_never_run_setup_or_backward(hsin):
    hsin(X)
    jax.jit(hsin)(X)
    assert hsin.calls == {"setup": 0, "backward": 0}


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda f: jax.jit(jax.grad(f)), id="jit(grad)"),
        pytest.param(lambda f: jax.grad(jax.checkpoint(f)), id="grad(checkpoint)"),
        pytest.param(lambda f: jax.jit(jax.grad(jax.checkpoint(f, policy=jax.checkpoint_policies.nothing_saveable))), id="jit(grad(remat))"),
    ],
)
def test_grad_under_transforms(hsin, transform):
    np.testing.assert_allclose(transform(loss(hsin))(X), jax.grad(ref_loss)(X), rtol=1e-5)


def test_vjp_returned_from_jit(hsin):
    out, vjp = jax.jit(lambda x: jax.vjp(hsin, x))(X)
    (g,) = vjp(jnp.ones(3))
    np.testing.assert_allclose(g, jnp.cos(X), rtol=1e-5)
    (g2,) = jax.jit(vjp)(jnp.ones(3))
    np.testing.assert_allclose(g2, jnp.cos(X), rtol=1e-5)


def test_scan_training_loop(hsin):
    def step(w, _):
        g = jax.grad(lambda w: (hsin(w) ** 2).sum())(w)
        return w - 0.1 * g, None

    w_final, _ = jax.jit(lambda w: jax.lax.scan(step, w, None, length=5))(X)

    def ref_step(w, _):
        return w - 0.1 * jax.grad(ref_loss)(w), None

    w_ref, _ = jax.lax.scan(ref_step, X, None, length=5)
    np.testing.assert_allclose(w_final, w_ref, rtol=1e-5)


def test_forward_mode_from_backward(hsin):
    out, tangent = jax.jvp(hsin, (X,), (jnp.ones(3),))
    np.testing.assert_allclose(out, jnp.sin(X), rtol=1e-6)
    np.testing.assert_allclose(tangent, jnp.cos(X), rtol=1e-5)
    np.testing.assert_allclose(jax.jacfwd(hsin)(X), jnp.diag(jnp.cos(X)), rtol=1e-5)
    np.testing.assert_allclose(jax.hessian(lambda x: hsin(x).sum())(X), jnp.diag(-jnp.sin(X)), rtol=1e-5, atol=1e-6)


def test_vmap_of_both_modes(hsin):
    xs = jnp.stack([X, 2 * X])
    np.testing.assert_allclose(jax.vmap(jax.grad(loss(hsin)))(xs), jax.vmap(jax.grad(ref_loss))(xs), rtol=1e-5)
    tangents = jax.vmap(lambda x: jax.jvp(hsin, (x,), (jnp.ones(3),))[1])(xs)
    np.testing.assert_allclose(tangents, jnp.cos(xs), rtol=1e-5)


def test_keyword_only_inputs_and_list_inputs():
    @jaxops.custom_op("t_ag::wsum", mutates_args=())
    def wsum(xs: list[jax.Array], w: jax.Array, *, scale: float = 1.0) -> jax.Array:
        return (sum(xs) * w) * scale

    seen = {}

    def setup_context(ctx, inputs, keyword_only_inputs, output):
        xs, w = inputs
        seen["needs"] = ctx.needs_input_grad
        ctx.scale = keyword_only_inputs["scale"]
        ctx.save_for_backward(w, *xs)

    def backward(ctx, g):
        w, *xs = ctx.saved_tensors
        gx = g * w * ctx.scale
        return [gx for _ in xs], g * sum(xs) * ctx.scale

    wsum.register_autograd(backward, setup_context=setup_context)
    a, b, w = X, 2 * X, jnp.ones(3) * 3
    ga, gb, gw = jax.grad(lambda a, b, w: wsum([a, b], w, scale=2.0).sum(), argnums=(0, 1, 2))(a, b, w)
    np.testing.assert_allclose(ga, 6 * jnp.ones(3))
    np.testing.assert_allclose(gb, 6 * jnp.ones(3))
    np.testing.assert_allclose(gw, 2 * (a + b))
    assert seen["needs"] == (True, True)
    jax.grad(lambda w: wsum([a, b], w).sum())(w)
    assert seen["needs"] == (False, True)


def test_backward_return_errors():
    @jaxops.custom_op("t_ag::mul", mutates_args=())
    def mul(a: jax.Array, b: jax.Array) -> jax.Array:
        return a * b

    mul.register_autograd(lambda ctx, g: g)
    with pytest.raises(RuntimeError, match="incorrect number of gradients"):
        jax.grad(lambda a: mul(a, a).sum())(X)
    mul.register_autograd(lambda ctx, g: (g, jnp.ones(5)))
    with pytest.raises(RuntimeError, match="expected shape"):
        jax.grad(lambda a: mul(a, a).sum())(X)
    mul.register_autograd(lambda ctx, g: (g.astype(jnp.bfloat16), None))
    g = jax.grad(lambda a: mul(a, X).sum())(X)
    assert g.dtype == jnp.float32  # cast to the input's dtype


def test_backward_exception_propagates():
    @jaxops.custom_op("t_ag::fails", mutates_args=())
    def fails(a: jax.Array) -> jax.Array:
        return a

    def backward(ctx, g):
        raise KeyError("no gradient today")

    fails.register_autograd(backward)
    with pytest.raises(KeyError, match="no gradient today"):
        jax.grad(lambda a: fails(a).sum())(X)


def test_register_autograd_validation_and_functional_form():
    @jaxops.custom_op("t_ag::ident", mutates_args=())
    def ident(a: jax.Array) -> jax.Array:
        return a

    with pytest.raises(TypeError, match="expects a callable backward"):
        ident.register_autograd(3)
    with pytest.raises(TypeError, match="setup_context must take"):
        ident.register_autograd(lambda ctx, g: g, setup_context=lambda ctx: None)
    jaxops.register_autograd("t_ag::ident", lambda ctx, g: 3 * g)
    np.testing.assert_allclose(jax.grad(lambda a: ident(a).sum())(X), 3 * jnp.ones(3))


def test_registered_backward_overrides_traceable_body():
    @jaxops.custom_op("t_ag::ste", mutates_args=())
    def ste(a: jax.Array) -> jax.Array:
        return jnp.round(a)

    ste.register_autograd(lambda ctx, g: g)  # straight-through estimator
    np.testing.assert_allclose(jax.grad(lambda a: ste(a).sum())(X), jnp.ones(3))
    np.testing.assert_allclose(jax.jit(ste)(X), jnp.round(X))


# ------------------------------------------------ host op, no formula: the fallback mode
# ------------------------------------------------------------ autograd fallback
@pytest.fixture
def hsin_no_formula():
    @jaxops.custom_op("t_k::hsin_no_formula", mutates_args=(), host=True)
    def hsin_no_formula(x: jax.Array) -> jax.Array:
        return np.sin(x)

    hsin_no_formula.register_fake(lambda x: x)
    return hsin_no_formula


def test_fallback_warn_is_default_and_gives_zero(hsin_no_formula):
    assert jaxops.get_autograd_fallback_mode() == "warn"
    with pytest.warns(UserWarning, match="an autograd kernel was not registered") as rec:
        g = jax.grad(lambda x: (hsin_no_formula(x) + x).sum())(X)
    assert "t_k::hsin_no_formula" in str(rec[0].message)
    np.testing.assert_allclose(g, jnp.ones(3))


def test_fallback_nothing_and_error(hsin_no_formula):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with jaxops.autograd_fallback_mode("nothing"):
            np.testing.assert_allclose(jax.grad(lambda x: hsin_no_formula(x).sum())(X), jnp.zeros(3))
    with jaxops.autograd_fallback_mode("error"):
        with pytest.raises(RuntimeError, match="no autograd formula") as info:
            jax.grad(lambda x: hsin_no_formula(x).sum())(X)
        assert "t_k::hsin_no_formula" in str(info.value)
    assert jaxops.get_autograd_fallback_mode() == "warn"
    jaxops.set_autograd_fallback_mode("error")
    try:
        with pytest.raises(RuntimeError, match="no autograd formula"):
            jax.jit(jax.grad(lambda x: hsin_no_formula(x).sum()))(X)
    finally:
        jaxops.set_autograd_fallback_mode("warn")
    with pytest.raises(ValueError, match="fallback mode"):
        jaxops.set_autograd_fallback_mode("loud")


def test_fallback_fires_only_when_gradient_flows(hsin_no_formula):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with jaxops.autograd_fallback_mode("error"):
            hsin_no_formula(X)
            jax.jit(hsin_no_formula)(X)
            # the op's output is unused by the loss: no gradient flows through it
            jax.grad(lambda x: (x * 2).sum() + 0 * jax.lax.stop_gradient(hsin_no_formula(x)).sum())(X)

            def unused(x):
                _ = hsin_no_formula(x)
                return (x**2).sum()

            jax.grad(unused)(X)


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
