"""Core behaviour of ``custom_vjp.Function``: ctx, return rules, messages."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from custom_vjp import Function, FunctionCtx, _state, once_differentiable

X = jnp.array([0.1, 0.2, 0.3], dtype=jnp.float32)


class Sin(Function):
    @staticmethod
    def forward(x):
        return jnp.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * jnp.cos(x)


class CtxMul(Function):
    """ctx-style forward with a Python attribute and an array attribute."""

    @staticmethod
    def forward(ctx, x, y, k):
        ctx.save_for_backward(x, y)
        ctx.k = k
        ctx.extra = {"twice": 2 * x, "tag": "hello"}
        return x * y * k

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        assert ctx.extra["tag"] == "hello"
        np.testing.assert_allclose(ctx.extra["twice"], 2 * x)
        return g * y * ctx.k, g * x * ctx.k, None


def test_forward_and_grad_both_styles():
    np.testing.assert_allclose(Sin.apply(X), jnp.sin(X))
    np.testing.assert_allclose(jax.grad(lambda x: Sin.apply(x).sum())(X), jnp.cos(X), rtol=1e-6)
    y = jnp.full(3, 2.0)
    gx, gy = jax.grad(lambda x, y: CtxMul.apply(x, y, 3).sum(), argnums=(0, 1))(X, y)
    np.testing.assert_allclose(gx, 3 * y)
    np.testing.assert_allclose(gy, 3 * X)


def test_plain_call_and_jit_never_run_setup_context_or_backward():
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
            return g * 2

    Spy.apply(X)
    jax.jit(Spy.apply)(X)
    assert calls == []
    jax.grad(lambda x: Spy.apply(x).sum())(X)
    assert calls == ["setup", "backward"]


def test_ctx_style_plain_call_sees_no_grad_needed():
    seen = []

    class Fwd(Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(ctx.needs_input_grad)
            return x + 1

        @staticmethod
        def backward(ctx, g):
            return g

    Fwd.apply(X)
    assert seen == [(False,)]


def test_needs_input_grad_follows_perturbation():
    seen = []

    class Add(Function):
        @staticmethod
        def forward(x, y, n):
            return x + y * n

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.n = inputs[2]
            seen.append(ctx.needs_input_grad)

        @staticmethod
        def backward(ctx, g):
            return g, g * ctx.n, None

    y = jnp.ones(3)
    jax.grad(lambda x: Add.apply(x, y, 2).sum())(X)
    jax.grad(lambda y: Add.apply(X, y, 2).sum())(y)
    jax.grad(lambda x, y: Add.apply(x, y, 2).sum(), argnums=(0, 1))(X, y)
    assert seen == [(True, False, False), (False, True, False), (True, True, False)]


def _two_outputs(materialize: bool, seen: list):
    class Two(Function):
        @staticmethod
        def forward(x):
            return x * 2, x * 3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.set_materialize_grads(materialize)

        @staticmethod
        def backward(ctx, g1, g2):
            seen.append((g1, g2))
            total = 0.0
            if g1 is not None:
                total = total + 2 * g1
            if g2 is not None:
                total = total + 3 * g2
            return total

    return Two


def test_set_materialize_grads_false_gives_none():
    seen: list = []
    Two = _two_outputs(False, seen)
    g = jax.grad(lambda x: Two.apply(x)[0].sum())(X)
    np.testing.assert_allclose(g, 2.0)
    (g1, g2), = seen
    assert g2 is None and g1 is not None


def test_materialized_grads_are_zeros():
    seen: list = []
    Two = _two_outputs(True, seen)
    g = jax.grad(lambda x: Two.apply(x)[1].sum())(X)
    np.testing.assert_allclose(g, 3.0)
    (g1, g2), = seen
    np.testing.assert_array_equal(g1, jnp.zeros(3))
    assert g1.dtype == jnp.float32


def test_mark_non_differentiable_outputs():
    seen = []

    class SortIdx(Function):
        @staticmethod
        def forward(x):
            return x * 2, jnp.argsort(x), x + 1

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.mark_non_differentiable(output[1], output[2])

        @staticmethod
        def backward(ctx, g, gi, g2):
            seen.append((gi, g2))
            return 2 * g

    g = jax.grad(lambda x: (SortIdx.apply(x)[0] + SortIdx.apply(x)[2]).sum())(X)
    np.testing.assert_allclose(g, 2.0)
    for gi, g2 in seen:
        assert gi.dtype == jnp.int32 and not np.any(np.asarray(gi))  # never float0
        np.testing.assert_array_equal(g2, jnp.zeros(3))
    # the non-differentiable output has a zero gradient
    np.testing.assert_array_equal(jax.grad(lambda x: SortIdx.apply(x)[2].sum())(X), jnp.zeros(3))


def test_mark_dirty_is_functionalized():
    class AddOne(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.mark_dirty(x)
            return x + 1

        @staticmethod
        def backward(ctx, g):
            return g

    x = jnp.array([1.0, 2.0])
    out = AddOne.apply(x)
    np.testing.assert_array_equal(out, [2.0, 3.0])
    np.testing.assert_array_equal(x, [1.0, 2.0])
    np.testing.assert_array_equal(jax.grad(lambda x: AddOne.apply(x).sum())(x), [1.0, 1.0])


def test_saved_tensors_read_after_backward_raises():
    stash = []

    class Keep(Function):
        @staticmethod
        def forward(x):
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            stash.append(ctx)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            stash.append(ctx)
            return g * 2

    jax.grad(lambda x: Keep.apply(x).sum())(X)
    assert len(stash) == 2
    for ctx in stash:
        assert isinstance(ctx, FunctionCtx)
        with pytest.raises(RuntimeError, match="after they have already been freed"):
            _ = ctx.saved_tensors


def test_non_array_inputs_and_outputs_pass_statically():
    class Scale(Function):
        @staticmethod
        def forward(x, k, name):
            return x * k, k + 1, name

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.k = inputs[1]

        @staticmethod
        def backward(ctx, g, gk, gname):
            assert gk is None and gname is None
            return g * ctx.k, None, None

    y, k1, name = Scale.apply(X, 3, "s")
    assert k1 == 4 and isinstance(k1, int) and name == "s"
    y2, k2 = jax.jit(lambda x: Scale.apply(x, 3, "s")[:2])(X)
    assert int(k2) == 4
    np.testing.assert_allclose(jax.grad(lambda x: Scale.apply(x, 3, "s")[0].sum())(X), 3.0)


def test_gradient_for_non_array_input_must_be_none():
    class Bad(Function):
        @staticmethod
        def forward(x, k):
            return x * k

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g, g

    with pytest.raises(RuntimeError, match=r"BadBackward returned a gradient different than None at position 1"):
        jax.grad(lambda x: Bad.apply(x, 2.0).sum())(X)


def _returns(value_fn, nin=1):
    class Ret(Function):
        @staticmethod
        def forward(*args):
            return sum(args[1:], args[0])

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return value_fn(g)

    return Ret


def test_backward_return_normalization():
    # bare array for a single input, trailing Nones trimmed
    for fn in (lambda g: g, lambda g: (g,), lambda g: (g, None, None)):
        Ret = _returns(fn)
        np.testing.assert_allclose(jax.grad(lambda x, R=Ret: R.apply(x).sum())(X), 1.0)
    # None means zero
    np.testing.assert_array_equal(
        jax.grad(lambda x: _returns(lambda g: None).apply(x).sum())(X), jnp.zeros(3)
    )
    Two = _returns(lambda g: (g, None))
    gx, gy = jax.grad(lambda x, y: Two.apply(x, y).sum(), argnums=(0, 1))(X, X)
    np.testing.assert_allclose(gx, 1.0)
    np.testing.assert_array_equal(gy, jnp.zeros(3))


def test_wrong_gradient_count_raises():
    Ret = _returns(lambda g: (g, g))
    with pytest.raises(
        RuntimeError,
        match=re.escape("function RetBackward returned an incorrect number of gradients (expected 1, got 2)"),
    ):
        jax.grad(lambda x: Ret.apply(x).sum())(X)
    Ret2 = _returns(lambda g: g)
    with pytest.raises(RuntimeError, match=r"incorrect number of gradients \(expected 2, got 1\)"):
        jax.jit(jax.grad(lambda x: Ret2.apply(x, x).sum()))(X)


def test_wrong_gradient_shape_raises():
    Ret = _returns(lambda g: jnp.ones(4))
    with pytest.raises(
        RuntimeError,
        match=re.escape(
            "Function RetBackward returned an invalid gradient at index 0 - got [4] but "
            "expected shape compatible with [3]"
        ),
    ):
        jax.grad(lambda x: Ret.apply(x).sum())(X)


def test_broadcastable_gradient_is_summed_and_dtype_cast():
    Ret = _returns(lambda g: jnp.ones((2, 3), jnp.float16))
    g = jax.grad(lambda x: Ret.apply(x).sum())(X)
    assert g.dtype == jnp.float32
    np.testing.assert_array_equal(g, jnp.full(3, 2.0))


def test_backward_exceptions_propagate_unchanged():
    class MyError(Exception):
        pass

    def boom(g):
        raise MyError("exact text 123")

    with pytest.raises(MyError, match="^exact text 123") as info:
        jax.grad(lambda x: _returns(boom).apply(x).sum())(X)
    assert info.value.args == ("exact text 123",)
    with pytest.raises(MyError, match="^exact text 123") as info:
        jax.jit(jax.grad(lambda x: _returns(boom).apply(x).sum()))(X)
    assert info.value.args == ("exact text 123",)


def test_non_static_forward_and_instantiation_error_like_torch():
    class Legacy(Function):
        def forward(self, x):
            return x

    with pytest.raises(RuntimeError, match="non-static forward method is deprecated"):
        Legacy.apply(X)
    with pytest.warns(DeprecationWarning, match="should not be instantiated"):
        inst = Sin()
    with pytest.raises(RuntimeError, match="non-static forward method is deprecated"):
        inst(X)


def test_dynamic_subclass_and_name_override():
    Op = type(
        "foo_impl",
        (Function,),
        {
            "_custom_vjp_name": "mylib::foo",
            "forward": staticmethod(lambda x: x * 2.0),
            "setup_context": staticmethod(lambda ctx, inputs, output: None),
            "backward": staticmethod(lambda ctx, g: (g, g)),
        },
    )
    np.testing.assert_allclose(Op.apply(X), 2 * X)
    with pytest.raises(RuntimeError, match="mylib::foo.*incorrect number of gradients"):
        jax.grad(lambda x: Op.apply(x).sum())(X)


def test_dynamic_subclass_with_pure_callback_forward():
    def host_fwd(x):
        return jax.pure_callback(
            lambda a: np.asarray(a) * 3.0,
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            x,
            vmap_method="expand_dims",
        )

    Op = type(
        "triple",
        (Function,),
        {
            "forward": staticmethod(host_fwd),
            "setup_context": staticmethod(lambda ctx, inputs, output: None),
            "backward": staticmethod(lambda ctx, g: 3.0 * g),
        },
    )
    f = lambda x: Op.apply(x).sum()  # noqa: E731
    np.testing.assert_allclose(jax.grad(f)(X), 3.0)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(X), 3.0)
    np.testing.assert_allclose(jax.jvp(Op.apply, (X,), (jnp.ones(3),))[1], 3.0)
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda x: Op.apply(x)))(X), 3.0)


def test_list_input_gets_a_list_gradient():
    class SumList(Function):
        @staticmethod
        def forward(xs, w):
            return xs[0] * w + xs[1]

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0][0], inputs[1])

        @staticmethod
        def backward(ctx, g):
            x0, w = ctx.saved_tensors
            return [g * w, g], g * x0

    gxs, gw = jax.grad(lambda xs, w: SumList.apply(xs, w).sum(), argnums=(0, 1))([X, X], 2 * X)
    np.testing.assert_allclose(gxs[0], 2 * X)
    np.testing.assert_allclose(gxs[1], 1.0)
    np.testing.assert_allclose(gw, X)


def test_constructed_function_is_cached_per_static_structure():
    class Cached(Function):
        @staticmethod
        def forward(x, k):
            return x * k

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g, None

    for _ in range(3):
        Cached.apply(X, 2)
        Cached.apply(X * 2, 2)
    assert len(Cached.__dict__["_cvjp_info"].cache) == 1
    Cached.apply(X, 3)
    assert len(Cached.__dict__["_cvjp_info"].cache) == 2


def test_once_differentiable_first_order_and_error_when_differentiated_twice():
    class Once(Function):
        @staticmethod
        def forward(x):
            return jnp.sin(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * jnp.cos(x)

    f = lambda x: Once.apply(x).sum()  # noqa: E731
    np.testing.assert_allclose(jax.grad(f)(X), jnp.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(X), jnp.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda x: Once.apply(x)))(X), jnp.cos(X), rtol=1e-6)
    with pytest.raises(RuntimeError, match="trying to differentiate twice"):
        jax.grad(lambda x: jax.grad(f)(x).sum())(X)
    with pytest.raises(RuntimeError, match="trying to differentiate twice"):
        jax.hessian(f)(X)


def test_saved_tensors_hooks_pack_and_unpack():
    log = []

    def pack(x):
        log.append("pack")
        return (x.astype(jnp.float16), 10.0 * jnp.ones(()))

    def unpack(p):
        log.append("unpack")
        return p[0].astype(jnp.float32) * p[1]

    class Keep(Function):
        @staticmethod
        def forward(x):
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.w = inputs[0]

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x + g * ctx.w

    token = _state.saved_tensors_hooks_stack.set(((lambda x: x, lambda x: x), (pack, unpack)))
    try:
        g = jax.grad(lambda x: Keep.apply(x).sum())(jnp.array([1.0, 2.0]))
    finally:
        _state.saved_tensors_hooks_stack.reset(token)
    np.testing.assert_allclose(g, [20.0, 40.0])
    assert log.count("pack") == 2 and log.count("unpack") == 2
    log.clear()
    jax.grad(lambda x: Keep.apply(x).sum())(X)  # outside the hooks: untouched
    assert log == []


def test_anomaly_mode_checks_backward_outputs():
    pytest.importorskip("custom_vjp.anomaly")
    NanBack = _returns(lambda g: g * jnp.nan)
    NanBack.__name__ = "NanBack"  # noqa: B010 - the message names the class
    f = lambda x: NanBack.apply(x).sum()  # noqa: E731
    token = _state.anomaly_mode.set(True)
    try:
        with pytest.raises(RuntimeError, match="Function 'NanBack' returned nan values in its 0th output"):
            jax.grad(f)(X)
        with pytest.raises(Exception, match="Function 'NanBack' returned nan values in its 0th output"):
            jax.block_until_ready(jax.jit(jax.grad(f))(X))
    finally:
        _state.anomaly_mode.reset(token)
    assert np.isnan(np.asarray(jax.grad(f)(X))).all()  # off: no check
