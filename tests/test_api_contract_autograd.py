"""Black-box conformance audit of API.md sections 4, 5, 6, 7 and 9 (and the §0 nesting claim).

Every test reads one sentence of the contract and checks it through the public surface only
(``jaxops.*`` and ``custom_vjp.*`` names as API.md spells them); quoted message substrings are
matched exactly.  PyTorch is used as an oracle where API.md says "as in PyTorch".
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import custom_vjp
import jaxops
from custom_vjp import Function, once_differentiable

X = jnp.array([0.3, 0.9, 1.4])
X2 = jnp.array([[0.3, 0.9, 1.4], [-0.5, 0.2, 2.0]])  # (2, 3)
X3 = jnp.arange(12.0).reshape(2, 3, 2) / 7.0


# ============================================================================ subjects
# Four things that all compute sin(x) elementwise, each through a different mechanism:
# a custom_vjp Function, a traceable op with a registered backward, a host op with a
# registered backward (JAX backward) + fake + vmap rule, and a mutating host op.


class Sin(Function):
    @staticmethod
    def forward(x):
        return jnp.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.tag = "sin"

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        assert ctx.tag == "sin"
        return g * jnp.cos(x)


@jaxops.custom_op("apicag::tsin", mutates_args=())
def tsin(x: jax.Array) -> jax.Array:
    return jnp.sin(x)


def _sin_setup(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(x)
    ctx.scale = 1.0


def _sin_backward(ctx, g):
    (x,) = ctx.saved_tensors
    return g * jnp.cos(x) * ctx.scale


tsin.register_autograd(_sin_backward, setup_context=_sin_setup)


@jaxops.custom_op("apicag::hsin", mutates_args=(), host=True)
def hsin(x: jax.Array) -> jax.Array:
    return np.sin(x)


hsin.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
hsin.register_autograd(_sin_backward, setup_context=_sin_setup)


@hsin.register_vmap
def _hsin_vmap(info, in_dims, x):
    return hsin(x), in_dims[0]  # elementwise: the host kernel handles the whole batch


@jaxops.custom_op("apicag::msin_", mutates_args={"out"}, host=True)
def msin_(out: jax.Array, x: jax.Array) -> None:
    out[...] = np.sin(x)


def _msin_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _msin_backward(ctx, g):
    (x,) = ctx.saved_tensors
    return None, g * jnp.cos(x)


msin_.register_autograd(_msin_backward, setup_context=_msin_setup)


@jaxops.custom_op("apicag::tmsin_", mutates_args={"out"})
def tmsin_(out: jax.Array, x: jax.Array) -> None:
    out[...] = jnp.sin(x)  # traceable: out is a jax.Ref; JAX differentiates the body


SUBJECTS = {
    "Function": Sin.apply,
    "traceable_op": tsin,
    "host_op": hsin,
    "mutating_host_op": lambda x: msin_(jnp.zeros_like(x), x),
    "mutating_traceable_op": lambda x: tmsin_(jnp.zeros_like(x), x),
}


@pytest.fixture(params=sorted(SUBJECTS))
def f(request):
    return SUBJECTS[request.param]


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


def _scan_loss(fn):
    def loss(x):
        def body(c, _):
            return c + fn(x * c).sum(), None

        out, _ = lax.scan(body, jnp.float32(1.0), None, length=3)
        return out

    return loss


TRANSFORMS = {
    "eager": lambda fn: fn(X),
    "jit": lambda fn: jax.jit(fn)(X),
    "grad": lambda fn: jax.grad(lambda x: fn(x).sum())(X),
    "vjp_from_jit": lambda fn: jax.jit(lambda x: jax.vjp(fn, x))(X)[1](jnp.arange(3.0))[0],
    "jvp": lambda fn: jax.jvp(fn, (X,), (jnp.arange(3.0),))[1],
    "jacfwd": lambda fn: jax.jacfwd(fn)(X),
    "jacrev": lambda fn: jax.jacrev(fn)(X),
    "hessian": lambda fn: jax.hessian(lambda x: fn(x).sum())(X),
    "vmap_axes": lambda fn: jax.vmap(fn, in_axes=1, out_axes=1)(X2),
    "vmap_nested": lambda fn: jax.vmap(jax.vmap(fn, in_axes=1), in_axes=2, out_axes=1)(X3),
    "checkpoint_grad": lambda fn: jax.grad(lambda x: jax.checkpoint(fn)(x).sum())(X),
    "scan_grad": lambda fn: jax.grad(_scan_loss(fn))(X),
    "eval_shape": lambda fn: jax.eval_shape(fn, jax.ShapeDtypeStruct((3,), jnp.float32)).shape,
    "vmap_grad": lambda fn: jax.vmap(jax.grad(lambda x: fn(x).sum()))(X2),
    "grad_vmap": lambda fn: jax.grad(lambda x: jax.vmap(fn)(x).sum())(X2),
    "jit_vmap_grad_axes": lambda fn: jax.jit(
        jax.vmap(jax.grad(lambda x: fn(x).sum()), in_axes=1, out_axes=1)
    )(X2),
    "vmap_jvp": lambda fn: jax.vmap(lambda x: jax.jvp(fn, (x,), (jnp.ones_like(x),))[1])(X2),
    "jvp_of_grad": lambda fn: jax.jvp(jax.grad(lambda x: fn(x).sum()), (X,), (jnp.ones(3),))[1],
}


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_section0_any_nesting(f, transform):
    """§0: ops and Functions work under every transform, in any nesting (vs jnp.sin)."""
    got = TRANSFORMS[transform](f)
    want = TRANSFORMS[transform](jnp.sin)
    if transform == "eval_shape":
        assert got == want
    else:
        _close(got, want)


# ============================================================================ §4 autograd
def _fresh_host_op(name):
    @jaxops.custom_op(f"apicag::{name}", mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        return np.sin(x)

    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    return op


def test_setup_context_inputs_have_defaults_filled_and_ctx_survives_jit_checkpoint_scan():
    seen = []

    @jaxops.custom_op("apicag::scale_add", mutates_args=())
    def scale_add(x: jax.Array, y: jax.Array, alpha: float = 2.0) -> jax.Array:
        return x + alpha * y

    def setup_context(ctx, inputs, output):
        seen.append((type(inputs), len(inputs), inputs[2], ctx.needs_input_grad))
        ctx.save_for_backward(inputs[1])
        ctx.alpha = inputs[2]  # a Python value
        ctx.twice_y = 2 * inputs[1]  # an array attribute

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * ctx.twice_y / (2 * y), g * ctx.alpha, None

    scale_add.register_autograd(backward, setup_context=setup_context)
    y = X + 1.0
    want_x, want_y = jnp.ones(3), jnp.full(3, 2.0)
    _close(jax.grad(lambda x: scale_add(x, y).sum())(X), want_x)
    assert seen[-1] == (tuple, 3, 2.0, (True, False, False))
    _close(jax.jit(jax.grad(lambda y: jax.checkpoint(lambda y: scale_add(X, y))(y).sum()))(y), want_y)
    assert seen[-1][3] == (False, True, False)

    def body(c, _):
        return c + scale_add(X, y * c, alpha=3.0).sum(), None

    # d/dc of the scan: each step multiplies by 1 + 3 * sum(y)
    g = jax.grad(lambda c: lax.scan(body, c, None, length=2)[0])(1.0)
    np.testing.assert_allclose(g, (1 + 3 * float(y.sum())) ** 2, rtol=1e-5)


def test_setup_context_with_keyword_only_inputs():
    got = {}

    @jaxops.custom_op("apicag::kwonly", mutates_args=())
    def kwonly(x: jax.Array, *, scale: float = 3.0) -> jax.Array:
        return x * scale

    def setup_context(ctx, inputs, keyword_only_inputs, output):
        got["kw"] = dict(keyword_only_inputs)
        ctx.scale = keyword_only_inputs["scale"]

    kwonly.register_autograd(lambda ctx, g: g * ctx.scale, setup_context=setup_context)
    _close(jax.grad(lambda x: kwonly(x, scale=5.0).sum())(X), jnp.full(3, 5.0))
    assert got["kw"] == {"scale": 5.0}


def test_backward_count_shape_and_dtype_rules():
    @jaxops.custom_op("apicag::two_in", mutates_args=())
    def two_in(x: jax.Array, y: jax.Array) -> jax.Array:
        return x * y

    loss = lambda x: two_in(x, X).sum()  # noqa: E731
    two_in.register_autograd(lambda ctx, g: (g,))
    with pytest.raises(RuntimeError, match="incorrect number of gradients"):
        jax.grad(loss)(X)
    two_in.register_autograd(lambda ctx, g: (g[:2], None))
    with pytest.raises(RuntimeError, match="expected shape"):
        jax.grad(loss)(X)
    two_in.register_autograd(lambda ctx, g: (g.astype(jnp.bfloat16) * 2, None))
    g = jax.grad(loss)(X)
    assert g.dtype == jnp.float32
    _close(g, jnp.full(3, 2.0))


def test_list_input_gets_a_list_gradient_and_forward_mode_from_backward():
    @jaxops.custom_op("apicag::wsum", mutates_args=())
    def wsum(xs: list[jax.Array], w: float) -> jax.Array:
        return sum(x * w for x in xs)

    wsum.register_autograd(
        lambda ctx, g: ([g * ctx.w, g * ctx.w], None),
        setup_context=lambda ctx, inputs, output: setattr(ctx, "w", inputs[1]),
    )
    ga, gb = jax.grad(lambda a, b: wsum([a, b], 3.0).sum(), argnums=(0, 1))(X, X)
    _close(ga, jnp.full(3, 3.0))
    _close(gb, jnp.full(3, 3.0))
    _, t = jax.jvp(lambda a: wsum([a, X], 3.0), (X,), (jnp.ones(3),))
    _close(t, jnp.full(3, 3.0))


def test_jvp_is_derived_from_a_backward_that_is_not_the_true_derivative():
    @jaxops.custom_op("apicag::fake_grad", mutates_args=())
    def fake_grad(x: jax.Array) -> jax.Array:
        return x

    fake_grad.register_autograd(lambda ctx, g: 5.0 * g)  # deliberately "wrong": 5x
    _close(jax.grad(lambda x: fake_grad(x).sum())(X), jnp.full(3, 5.0))
    _close(jax.jvp(fake_grad, (X,), (jnp.ones(3),))[1], jnp.full(3, 5.0))
    _close(jax.jacfwd(fake_grad)(X), 5.0 * jnp.eye(3))
    _close(jax.vmap(lambda x: jax.jvp(fake_grad, (x,), (x,))[1])(X2), 5.0 * X2)


def _grad_sum(fn):
    return lambda x: jax.grad(lambda x: fn(x).sum())(x)


@pytest.mark.parametrize("mode", ["warn", "nothing", "error"])
@pytest.mark.parametrize("how", ["grad", "jit_grad", "jacfwd", "vmap_grad"])
def test_fallback_modes_when_a_gradient_flows(mode, how):
    op = _fresh_host_op(f"fb_{mode}_{how}")
    run = {
        "grad": lambda: jax.grad(lambda x: op(x).sum())(X),
        "jit_grad": lambda: jax.jit(jax.grad(lambda x: op(x).sum()))(X),
        "vjp": lambda: jax.vjp(op, X)[1](jnp.ones(3))[0],
        "jvp": lambda: jax.jvp(op, (X,), (jnp.ones(3),))[1],
        "jacfwd": lambda: jax.jacfwd(op)(X).sum(0),
        "vmap_grad": lambda: jax.vmap(jax.grad(lambda x: op(x).sum()))(X2)[0],
    }[how]
    with jaxops.autograd_fallback_mode(mode):
        if mode == "error":
            with pytest.raises(RuntimeError, match="no autograd formula") as info:
                run()
            assert "apicag::fb_error" in str(info.value)
        elif mode == "warn":
            with pytest.warns(UserWarning, match="an autograd kernel was not registered") as rec:
                g = run()
            assert any(f"apicag::fb_warn_{how}" in str(w.message) for w in rec)
            _close(g, jnp.zeros(3))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                _close(run(), jnp.zeros(3))
    assert jaxops.get_autograd_fallback_mode() == "warn"


def test_fallback_never_fires_for_plain_call_jit_or_unused_output():
    @jaxops.custom_op("apicag::fb_two", mutates_args=(), host=True)
    def two(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return np.sin(x), np.cos(x)

    two.register_fake(lambda x: (x, x))
    with jaxops.autograd_fallback_mode("error"):
        two(X)
        jax.jit(two)(X)
        jax.eval_shape(two, X)
        # a gradient is taken, but none flows through the op's outputs
        _close(jax.grad(lambda x: x.sum() + 0.0 * lax.stop_gradient(two(x)[0]).sum())(X), jnp.ones(3))
        _close(jax.grad(lambda x: (two(x), x.sum())[1])(X), jnp.ones(3))
        with pytest.raises(RuntimeError, match="no autograd formula"):
            jax.grad(lambda x: two(x)[1].sum())(X)  # one output used is enough


def test_set_autograd_fallback_mode_is_global():
    op = _fresh_host_op("fb_global")
    jaxops.set_autograd_fallback_mode("error")
    try:
        with pytest.raises(RuntimeError, match="no autograd formula"):
            jax.grad(lambda x: op(x).sum())(X)
    finally:
        jaxops.set_autograd_fallback_mode("warn")
    with pytest.warns(UserWarning, match="an autograd kernel was not registered"):
        jax.grad(lambda x: op(x).sum())(X)


def test_fallback_warns_on_every_gradient_trace():
    """Two separate gradient computations each warn (PyTorch warns on every backward)."""
    op = _fresh_host_op("fb_twice")
    for _ in range(2):
        with pytest.warns(UserWarning, match="an autograd kernel was not registered"):
            jax.grad(lambda x: op(x).sum())(X)


# ============================================================================ §5 vmap
def test_vmap_rule_info_in_dims_axes_nesting_and_grad_both_orders():
    calls = []

    @jaxops.custom_op("apicag::hmul", mutates_args=(), host=True)
    def hmul(x: jax.Array, y: jax.Array) -> jax.Array:
        return np.asarray(x * y)

    hmul.register_fake(lambda x, y: jax.ShapeDtypeStruct(jnp.broadcast_shapes(x.shape, y.shape), x.dtype))
    hmul.register_autograd(
        lambda ctx, g: (g * ctx.saved_tensors[1], g * ctx.saved_tensors[0]),
        setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs),
    )

    @hmul.register_vmap
    def rule(info, in_dims, x, y):
        calls.append((info.batch_size, tuple(in_dims)))
        rank = max(v.ndim - (d is not None) for v, d in zip((x, y), in_dims))

        def lead(v, d):  # (batch or 1, *example broadcast to `rank` dims)
            v = jnp.moveaxis(v, d, 0) if d is not None else v[None]
            return v.reshape(v.shape[:1] + (1,) * (rank + 1 - v.ndim) + v.shape[1:])

        return hmul(lead(x, in_dims[0]), lead(y, in_dims[1])), 0

    a, b = X2, X2[0] + 1.0  # (2, 3), (3,)
    _close(jax.vmap(hmul, in_axes=(0, None))(a, b), a * b)
    assert calls[-1] == (2, (0, None))
    _close(jax.vmap(hmul, in_axes=(1, None), out_axes=1)(a.T, b), (a * b).T)
    assert calls[-1][0] == 2
    nested = jax.vmap(jax.vmap(hmul, in_axes=(0, None)), in_axes=(None, 0))(b, a)  # (2, 3, 3)
    _close(nested, b[None, :, None] * a[:, None, :])
    assert {c[0] for c in calls[-2:]} == {2, 3}
    loss = lambda x, y: hmul(x, y).sum()  # noqa: E731
    _close(jax.vmap(jax.grad(loss), in_axes=(0, None))(a, b), jnp.broadcast_to(b, a.shape))
    n = len(calls)
    _close(jax.grad(lambda x: jax.vmap(hmul, in_axes=(0, None))(x, b).sum())(a), jnp.broadcast_to(b, a.shape))
    assert len(calls) > n  # the rule was used under grad(vmap)
    _close(jax.vmap(jax.grad(loss, argnums=1), in_axes=(0, 0))(a, a), a)


def test_host_op_without_rule_calls_the_kernel_once_per_example_unless_vmap_method():
    shapes = []

    def body(x):
        shapes.append(np.shape(x))
        return np.sin(x)

    seq = jaxops.custom_op("apicag::hseq", body, mutates_args=(), host=True, schema="(Tensor x) -> Tensor")
    seq.register_fake(lambda x: x)
    _close(jax.vmap(seq)(X2), jnp.sin(X2))
    assert shapes == [(3,), (3,)]
    shapes.clear()
    exp = jaxops.custom_op(
        "apicag::hexp", body, mutates_args=(), host=True, schema="(Tensor x) -> Tensor",
        vmap_method="expand_dims",
    )
    exp.register_fake(lambda x: x)
    _close(jax.vmap(exp)(X2), jnp.sin(X2))
    assert shapes == [(2, 3)]


# ============================================================================ §6 mutation
def test_mutation_conventions_refs_and_transforms():
    @jaxops.custom_op("apicag::addmul_", mutates_args={"a", "b"}, host=True)
    def addmul_(a: jax.Array, b: jax.Array, x: jax.Array) -> jax.Array:
        assert a.flags.writeable and isinstance(a, np.ndarray)
        a += x
        b *= x
        return (a + b).sum(keepdims=True)

    addmul_.register_fake(lambda a, b, x: jax.ShapeDtypeStruct((1,), a.dtype))
    a, b = jnp.ones(3), jnp.full(3, 2.0)
    out, (na, nb) = addmul_(a, b, X)
    _close(na, 1 + X)
    _close(nb, 2 * X)
    _close(out, (1 + X + 2 * X).sum(keepdims=True))
    _close(a, jnp.ones(3))  # callers never see an input change
    jout, (ja, jb) = jax.jit(addmul_)(a, b, X)
    _close(ja, na)
    _close(jout, out)
    _close(jax.vmap(lambda x: addmul_(a, b, x)[1][0])(X2), 1 + X2)
    ra = jax.new_ref(jnp.ones(3))
    addmul_(ra, b, X)
    _close(ra[...], 1 + X)

    @jax.jit
    def step(r, x):
        addmul_(r, b, x)

    rb = jax.new_ref(jnp.zeros(3))
    step(rb, X)
    _close(rb[...], X)


def test_traceable_mutation_differentiates_and_aliasing_raises():
    @jaxops.custom_op("apicag::tscale_", mutates_args={"out"})
    def tscale_(out: jax.Array, x: jax.Array) -> None:
        out[...] = out[...] * x

    _close(jax.grad(lambda x: tscale_(jnp.full(3, 2.0), x).sum())(X), jnp.full(3, 2.0))
    _close(jax.jvp(lambda x: tscale_(X, x), (X,), (jnp.ones(3),))[1], X)
    assert jax.eval_shape(lambda x: tscale_(x, x), X).shape == (3,)

    @jaxops.custom_op("apicag::alias", mutates_args=(), host=True)
    def alias(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(RuntimeError, match="may not alias"):
        alias(X)

    @jaxops.custom_op("apicag::talias", mutates_args={"out"})
    def talias(out: jax.Array) -> jax.Array:
        return out

    with pytest.raises(RuntimeError, match="may not alias"):
        talias(X)


# ============================================================================ §7 opcheck
ALL_CHECKS = {
    "test_schema", "test_autograd_registration", "test_faketensor",
    "test_aot_dispatch_dynamic", "test_vmap", "test_gradcheck",
}


def test_opcheck_success_dict_and_unknown_name():
    res = jaxops.opcheck(hsin, (X,))
    assert set(res) == ALL_CHECKS and set(res.values()) == {"SUCCESS"}
    assert jaxops.opcheck(hsin, (X,), test_utils=["test_vmap"]) == {"test_vmap": "SUCCESS"}
    with pytest.raises(ValueError, match="test_utils"):
        jaxops.opcheck(hsin, (X,), test_utils=["test_nope"])


def _broken(name, fake=None, backward=None, rule=None, mutate=False):
    @jaxops.custom_op(f"apicag::{name}", mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        if mutate:
            x[...] = 0.0
        return np.sin(x)

    op.register_fake(fake or (lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)))
    op.register_autograd(
        backward or (lambda ctx, g: g * jnp.cos(ctx.saved_tensors[0])),
        setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]),
    )
    if rule is not None:
        op.register_vmap(rule)
    return op


@pytest.mark.parametrize(
    "check, build, blame",
    [
        ("test_faketensor", lambda: _broken("bad_fake", fake=lambda x: jax.ShapeDtypeStruct((4,), x.dtype)),
         "register_fake"),
        ("test_gradcheck", lambda: _broken("bad_bwd", backward=lambda ctx, g: 2 * g), "register_autograd"),
        ("test_vmap", lambda: _broken("bad_rule", rule=lambda info, in_dims, x: (jnp.cos(x), 0)), "register_vmap"),
        ("test_schema", lambda: _broken("bad_schema", mutate=True), "mutates_args"),
        ("test_autograd_registration", lambda: _fresh_host_op("no_formula"), "register_autograd"),
    ],
)
def test_opcheck_blames_the_wrong_registration(check, build, blame):
    op = build()
    with pytest.raises(jaxops.OpCheckError, match=blame):
        jaxops.opcheck(op, (X,), test_utils=[check])
    res = jaxops.opcheck(op, (X,), test_utils=[check, "test_faketensor"], raise_exception=False)
    assert isinstance(res[check], jaxops.OpCheckError)
    assert set(res) == {check, "test_faketensor"}


def test_opcheck_imports_nothing_test_only():
    code = (
        "import sys, jax, jax.numpy as jnp, jaxops\n"
        "op = jaxops.custom_op('iso::f', lambda x: x * 2, mutates_args=(), schema='(Tensor x) -> Tensor')\n"
        "jaxops.opcheck(op, (jnp.ones(2),))\n"
        "assert 'pytest' not in sys.modules and '_pytest' not in sys.modules, 'pytest imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ============================================================================ §9 custom_vjp
def test_needs_input_grad_one_per_forward_input_and_static_passthrough():
    seen = []

    class Scale(Function):
        @staticmethod
        def forward(ctx, x, n, y):
            ctx.n = n
            seen.append(ctx.needs_input_grad)
            return x * n + y, "tag"

        @staticmethod
        def backward(ctx, g, _g_tag):
            seen.append(ctx.needs_input_grad)
            return g * ctx.n, None, g

    out, tag = Scale.apply(X, 3, X)
    assert tag == "tag"
    g = jax.grad(lambda x: Scale.apply(x, 3, X)[0].sum())(X)
    _close(g, jnp.full(3, 3.0))
    assert seen[-1] == (True, False, False)
    assert all(isinstance(b, bool) for b in seen[-1])


def test_materialize_non_differentiable_and_dirty():
    class Two(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(False)
            idx = jnp.argmax(x)
            ctx.mark_non_differentiable(idx)
            return x * 2, x * 3, idx

        @staticmethod
        def backward(ctx, ga, gb, gidx):
            assert gb is None
            return 2 * ga

    _close(jax.grad(lambda x: Two.apply(x)[0].sum())(X), jnp.full(3, 2.0))

    class AddOne_(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.mark_dirty(x)
            return x + 1

        @staticmethod
        def backward(ctx, g):
            return g

    y = AddOne_.apply(X)
    _close(y, X + 1)
    _close(X, jnp.array([0.3, 0.9, 1.4]))
    _close(jax.grad(lambda x: AddOne_.apply(x).sum())(X), jnp.ones(3))


def test_saved_tensors_after_backward_raises():
    kept = []

    class Keep(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            kept.append(ctx)
            return x * 2

        @staticmethod
        def backward(ctx, g):
            kept.append(ctx)
            return g * 2

    jax.grad(lambda x: Keep.apply(x).sum())(X)
    for ctx in (kept[0], kept[-1]):  # the forward's ctx and the one backward saw
        with pytest.raises(RuntimeError, match="saved tensors after they have already been freed"):
            _ = ctx.saved_tensors


def test_backward_return_rules():
    def make(bw):
        return type("R", (Function,), {
            "forward": staticmethod(lambda ctx, x, y: x * y),
            "backward": staticmethod(bw),
        })

    loss = lambda F: jax.grad(lambda x: F.apply(x, X).sum())(X)  # noqa: E731
    _close(loss(make(lambda ctx, g: (g, None, None, None))), jnp.ones(3))  # trailing Nones trimmed
    with pytest.raises(RuntimeError, match="incorrect number of gradients"):
        loss(make(lambda ctx, g: g))
    with pytest.raises(RuntimeError, match="expected shape"):
        loss(make(lambda ctx, g: (g[:1].reshape(1, 1, 1), None)))
    assert loss(make(lambda ctx, g: (g.astype(jnp.float16), None))).dtype == jnp.float32
    single = type("S", (Function,), {
        "forward": staticmethod(lambda ctx, x: x * 2), "backward": staticmethod(lambda ctx, g: g * 2)})
    _close(jax.grad(lambda x: single.apply(x).sum())(X), jnp.full(3, 2.0))


def test_user_jvp_drives_forward_and_backward_drives_reverse():
    class Both(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, g):
            return 2 * g

        @staticmethod
        def jvp(ctx, t):
            return 7 * t

    _close(jax.grad(lambda x: Both.apply(x).sum())(X), jnp.full(3, 2.0))
    _close(jax.jvp(Both.apply, (X,), (jnp.ones(3),))[1], jnp.full(3, 7.0))


def test_function_vmap_staticmethod_and_generate_vmap_rule():
    calls = []

    class V(Function):
        generate_vmap_rule = False

        @staticmethod
        def forward(x, k):
            return x * k

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.k = inputs[1]

        @staticmethod
        def backward(ctx, g):
            return g * ctx.k, None

        @staticmethod
        def vmap(info, in_dims, x, k):
            calls.append((info.batch_size, tuple(in_dims)))
            return jnp.moveaxis(x, in_dims[0], 0) * k, 0

    _close(jax.vmap(V.apply, in_axes=(1, None), out_axes=1)(X2.T, 2.0), 2.0 * X2.T)
    assert calls[-1][0] == 2 and calls[-1][1][1] is None
    _close(jax.vmap(jax.grad(lambda x: V.apply(x, 2.0).sum()))(X2), jnp.full((2, 3), 2.0))

    class G(Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return jnp.sin(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            return g * jnp.cos(ctx.saved_tensors[0])

    _close(jax.vmap(G.apply)(X2), jnp.sin(X2))


def test_host_backward_under_forward_mode_raises():
    class HostBw(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return jnp.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return jax.pure_callback(lambda g, x: np.asarray(g * np.cos(x)), jax.ShapeDtypeStruct(g.shape, g.dtype), g, x)

    _close(jax.grad(lambda x: HostBw.apply(x).sum())(X), jnp.cos(X))
    with pytest.raises(NotImplementedError, match="Trying to use forward AD with .* that does not support it"):
        jax.jvp(HostBw.apply, (X,), (jnp.ones(3),))


def test_once_differentiable_and_legacy_forward():
    class Once(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x ** 2 * g

    _close(jax.grad(lambda x: Once.apply(x).sum())(X), 3 * X**2)
    with pytest.raises(RuntimeError, match="trying to differentiate twice"):
        jax.hessian(lambda x: Once.apply(x).sum())(X)

    class Legacy(Function):
        def forward(self, x):
            return x

    with pytest.raises(RuntimeError, match="non-static forward method is deprecated"):
        Legacy.apply(X)


def test_gradcheck_and_gradgradcheck_name_input_and_output():
    x64 = jnp.asarray(np.array([0.3, 0.9, 1.4]), dtype=jnp.float64) if jax.config.jax_enable_x64 else X

    class Wrong(Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return a * 1.0, a * b

        @staticmethod
        def backward(ctx, g0, g1):
            a, b = ctx.saved_tensors
            return g0 + g1 * b, 0.0 * g1  # wrong only for d(output 1)/d(input 1)

    assert custom_vjp.gradcheck(Sin.apply, (x64,), eps=1e-3, atol=1e-2, rtol=1e-2) is True
    with pytest.raises(custom_vjp.GradcheckError, match="input 1") as info:
        custom_vjp.gradcheck(Wrong.apply, (x64, x64), eps=1e-3, atol=1e-2, rtol=1e-2)
    assert "output 1" in str(info.value)
    assert custom_vjp.gradgradcheck(Sin.apply, (x64,), eps=1e-3, atol=1e-2, rtol=1e-2) is True


def test_grad_hook_and_detect_anomaly_eager_and_jit():
    hooked = lambda x: (custom_vjp.grad_hook(x, lambda g: 3 * g) ** 2).sum()  # noqa: E731
    _close(hooked(X), (X**2).sum())
    _close(jax.grad(hooked)(X), 6 * X)
    _close(jax.jit(jax.grad(hooked))(X), 6 * X)
    _close(jax.grad(lambda x: custom_vjp.grad_hook(x, lambda g: None).sum())(X), jnp.ones(3))

    class NanBw(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * jnp.nan

    step = jax.jit(jax.grad(lambda x: NanBw.apply(x).sum()))
    assert bool(jnp.isnan(step(X)).all())  # traced outside: no check
    with custom_vjp.detect_anomaly():
        with pytest.raises(RuntimeError, match="NanBw"):
            jax.grad(lambda x: NanBw.apply(x).sum())(X)
        with pytest.raises(RuntimeError, match="returned nan values in its 0th output"):
            jax.block_until_ready(step(X))  # the same jitted step, now checked


def test_detect_anomaly_reaches_an_op_backward_after_a_cached_grad():
    @jaxops.custom_op("apicag::nan_bw", mutates_args=())
    def nan_bw(x: jax.Array) -> jax.Array:
        return x * 2

    nan_bw.register_autograd(lambda ctx, g: g * jnp.nan)
    jax.grad(lambda x: nan_bw(x).sum())(X)
    with custom_vjp.detect_anomaly():
        with pytest.raises(RuntimeError, match="returned nan values in its 0th output"):
            jax.block_until_ready(jax.grad(lambda x: nan_bw(x).sum())(X))


def test_checkpoint_and_saved_tensors_hooks():
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t.astype(jnp.bfloat16)

    def unpack(t):
        return t.astype(jnp.float32)

    with custom_vjp.saved_tensors_hooks(pack, unpack):
        g = jax.grad(lambda x: Sin.apply(x).sum())(X)
    assert packed
    np.testing.assert_allclose(g, jnp.cos(X), atol=2e-2)
    f_ck = custom_vjp.checkpoint(lambda x: Sin.apply(Sin.apply(x)))
    _close(jax.grad(lambda x: f_ck(x).sum())(X), jax.grad(lambda x: jnp.sin(jnp.sin(x)).sum())(X))
    f_pol = custom_vjp.checkpoint(lambda x: jnp.sin(x) * 2, policy=jax.checkpoint_policies.nothing_saveable)
    _close(jax.grad(lambda x: f_pol(x).sum())(X), 2 * jnp.cos(X))
