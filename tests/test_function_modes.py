"""Forward mode, vmap and second order of ``custom_vjp.Function``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from custom_vjp import Function, once_differentiable

X = jnp.array([0.1, 0.2, 0.3], dtype=jnp.float32)
T = jnp.array([1.0, -2.0, 0.5], dtype=jnp.float32)


def _sin(scale: float = 1.0, calls: list | None = None):
    class Sin(Function):
        @staticmethod
        def forward(x):
            return jnp.sin(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            if calls is not None:
                calls.append("backward")
            (x,) = ctx.saved_tensors
            return scale * g * jnp.cos(x)

    return Sin


def test_forward_mode_is_the_transpose_of_backward():
    Sin, Doubled = _sin(), _sin(2.0)
    _, t = jax.jvp(Sin.apply, (X,), (T,))
    np.testing.assert_allclose(t, T * jnp.cos(X), rtol=1e-6)
    _, t2 = jax.jvp(Doubled.apply, (X,), (T,))
    np.testing.assert_allclose(t2, 2 * T * jnp.cos(X), rtol=1e-6)
    _, t3 = jax.jit(lambda x, t: jax.jvp(Doubled.apply, (x,), (t,)))(X, T)
    np.testing.assert_allclose(t3, 2 * T * jnp.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.jacfwd(Doubled.apply)(X), jnp.diag(2 * jnp.cos(X)), rtol=1e-6)


def test_grad_calls_the_user_backward_at_trace_time():
    calls: list = []
    Sin = _sin(calls=calls)
    f = jax.jit(jax.grad(lambda x: Sin.apply(x).sum()))
    f(X)
    f(X)
    assert calls == ["backward"]


def test_second_order():
    Sin = _sin()
    f = lambda x: Sin.apply(x).sum()  # noqa: E731
    want = jnp.diag(-jnp.sin(X))
    np.testing.assert_allclose(jax.hessian(f)(X), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.grad(lambda x: jax.grad(f)(x).sum())(X), -jnp.sin(X), rtol=1e-5)
    np.testing.assert_allclose(jax.jacfwd(jax.jacfwd(f))(X), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jacrev(jax.jacfwd(f))(X), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.hessian(f))(X), want, rtol=1e-5, atol=1e-7)


def test_second_order_through_saved_output():
    class Exp(Function):
        @staticmethod
        def forward(x):
            return jnp.exp(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return g * y

    f = lambda x: Exp.apply(x).sum()  # noqa: E731
    np.testing.assert_allclose(jax.hessian(f)(X), jnp.diag(jnp.exp(X)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.grad(lambda x: jax.grad(f)(x).sum())(X), jnp.exp(X), rtol=1e-5)


def test_user_jvp_drives_forward_mode_and_backward_drives_reverse():
    class Both(Function):
        @staticmethod
        def forward(x):
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.tag = "fwd"

        @staticmethod
        def backward(ctx, g):
            return 10 * g

        @staticmethod
        def jvp(ctx, t):
            assert ctx.tag == "fwd"
            return 100 * t

    np.testing.assert_allclose(jax.grad(lambda x: Both.apply(x).sum())(X), 10.0)
    np.testing.assert_allclose(jax.jvp(Both.apply, (X,), (T,))[1], 100 * T)
    np.testing.assert_allclose(jax.vmap(lambda t: jax.jvp(Both.apply, (X,), (t,))[1])(jnp.stack([T, T])), 100 * jnp.stack([T, T]))


def test_user_jvp_wrong_shape_raises():
    class BadJvp(Function):
        @staticmethod
        def forward(x):
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g

        @staticmethod
        def jvp(ctx, t):
            return jnp.ones(5)

    with pytest.raises(RuntimeError, match=r"BadJvp.jvp returned an invalid tangent at index 0 .*expected shape"):
        jax.jvp(BadJvp.apply, (X,), (T,))


class HostBackward(Function):
    @staticmethod
    def forward(x):
        return jnp.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return jax.pure_callback(
            lambda g, x: np.asarray(g) * np.cos(np.asarray(x)),
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            g,
            x,
            vmap_method="expand_dims",
        )


class NumpyBackward(HostBackward):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return jnp.asarray(np.asarray(g) * np.cos(np.asarray(x)))  # NumPy on the cotangent


def test_host_backward_reverse_mode_works():
    f = lambda x: HostBackward.apply(x).sum()  # noqa: E731
    np.testing.assert_allclose(jax.grad(f)(X), jnp.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(X), jnp.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(HostBackward.apply))(X), jnp.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: NumpyBackward.apply(x).sum())(X), jnp.cos(X), rtol=1e-6)


@pytest.mark.parametrize("fn", [HostBackward, NumpyBackward])
def test_host_backward_under_forward_mode_raises(fn):
    pattern = "Trying to use forward AD with .* that does not support it"
    with pytest.raises(NotImplementedError, match=pattern):
        jax.jvp(fn.apply, (X,), (T,))
    with pytest.raises(NotImplementedError, match=pattern):
        jax.jit(lambda x, t: jax.jvp(fn.apply, (x,), (t,)))(X, T)
    with pytest.raises(NotImplementedError, match=f"forward AD with {fn.__name__}"):
        jax.jacfwd(fn.apply)(X)


def test_once_differentiable_keeps_forward_mode():
    class Once(Function):
        @staticmethod
        def forward(x):
            return x * 3

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            return 3 * g

    np.testing.assert_allclose(jax.jvp(Once.apply, (X,), (T,))[1], 3 * T)


def _with_vmap_rule(seen: list):
    class Scaled(Function):
        @staticmethod
        def forward(x, y, k):
            return x * y * k, k

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, y, k = inputs
            ctx.save_for_backward(x, y)
            ctx.k = k

        @staticmethod
        def backward(ctx, g, gk):
            x, y = ctx.saved_tensors
            return g * y * ctx.k, g * x * ctx.k, None

        @staticmethod
        def vmap(info, in_dims, x, y, k):
            seen.append((info.batch_size, in_dims))
            xd, yd, _ = in_dims
            x = x if xd is None else jnp.moveaxis(x, xd, 0)
            y = y if yd is None else jnp.moveaxis(y, yd, 0)
            return (x * y * k, k), (0, None)

    return Scaled


def test_vmap_rule_is_used_by_vmap_and_vmap_of_grad_and_jvp():
    seen: list = []
    Scaled = _with_vmap_rule(seen)
    xs = jnp.arange(6.0).reshape(2, 3)
    y = jnp.full(3, 2.0)
    out, k = jax.vmap(lambda x: Scaled.apply(x, y, 3))(xs)
    np.testing.assert_allclose(out, xs * y * 3)
    np.testing.assert_array_equal(k, [3, 3])  # vmap broadcasts a static output
    assert seen == [(2, (0, None, None))]
    g = jax.vmap(jax.grad(lambda x: Scaled.apply(x, y, 3)[0].sum()))(xs)
    np.testing.assert_allclose(g, jnp.broadcast_to(y * 3, (2, 3)))
    assert len(seen) == 2
    _, t = jax.vmap(lambda x: jax.jvp(lambda x: Scaled.apply(x, y, 3)[0], (x,), (x,)))(xs)
    np.testing.assert_allclose(t, xs * y * 3)
    out2, _ = jax.vmap(lambda x: Scaled.apply(x, y, 3), in_axes=1)(xs.T)
    np.testing.assert_allclose(out2, xs * y * 3)
    nested, _ = jax.vmap(jax.vmap(lambda x: Scaled.apply(x, y, 3)))(xs[None])
    np.testing.assert_allclose(nested[0], xs * y * 3)


def test_without_vmap_rule_jax_batches_automatically():
    Sin = _sin(2.0)
    xs = jnp.stack([X, 2 * X])
    np.testing.assert_allclose(jax.vmap(Sin.apply)(xs), jnp.sin(xs))
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda x: Sin.apply(x).sum()))(xs), 2 * jnp.cos(xs), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: jax.vmap(Sin.apply)(x).sum())(xs), 2 * jnp.cos(xs), rtol=1e-6)
    _, t = jax.vmap(lambda x: jax.jvp(Sin.apply, (x,), (x,)))(xs)
    np.testing.assert_allclose(t, 2 * xs * jnp.cos(xs), rtol=1e-6)
    np.testing.assert_allclose(
        jax.vmap(jax.hessian(lambda x: Sin.apply(x).sum()))(xs)[1], jnp.diag(-2 * jnp.sin(xs[1])), rtol=1e-5, atol=1e-7
    )


def test_generate_vmap_rule_with_vmap_staticmethod_is_ambiguous():
    class Both(Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return x

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g

        @staticmethod
        def vmap(info, in_dims, x):
            return x, in_dims[0]

    # Only vmap is ambiguous: a plain call, jit and grad never ask for a batching rule.
    np.testing.assert_allclose(Both.apply(X), X)
    np.testing.assert_allclose(jax.jit(Both.apply)(X), X)
    np.testing.assert_allclose(jax.grad(lambda x: Both.apply(x).sum())(X), jnp.ones_like(X))
    with pytest.raises(RuntimeError, match="You tried to vmap over Both, but it has both generate_vmap_rule=True and an overridden vmap staticmethod"):
        jax.vmap(Both.apply)(jnp.stack([X, X]))
    with pytest.raises(RuntimeError, match="both generate_vmap_rule=True and an overridden vmap staticmethod"):
        jax.vmap(jax.grad(lambda x: Both.apply(x).sum()))(jnp.stack([X, X]))


# ----------------------------------------------------------------------------- forward's defaults (issue 15a)


class TakeDefault(Function):
    """``forward(x, idx=(2,), scale=1.0)`` called as ``apply(x)``."""

    seen: list = []

    @staticmethod
    def forward(x, idx=(2,), scale=1.0):
        return x[jnp.array(idx)] * scale

    @staticmethod
    def setup_context(ctx, inputs, output):
        TakeDefault.seen.append(inputs)
        x, idx, scale = inputs  # defaults filled in, as in PyTorch
        ctx.n, ctx.idx, ctx.scale = x.shape[-1], idx, scale

    @staticmethod
    def backward(ctx, g):
        return jnp.zeros(ctx.n).at[jnp.array(ctx.idx)].add(g * ctx.scale), None, None

    @staticmethod
    def vmap(info, in_dims, x, idx, scale):
        x = jnp.moveaxis(x, in_dims[0], 0) if in_dims[0] is not None else jnp.broadcast_to(x, (info.batch_size, *x.shape))
        return x[:, jnp.array(idx)] * scale, 0


def test_setup_context_sees_forward_defaults():
    TakeDefault.seen.clear()
    g = jax.grad(lambda x: TakeDefault.apply(x).sum())(X)
    np.testing.assert_allclose(g, [0.0, 0.0, 1.0])
    assert len(TakeDefault.seen[-1]) == 3 and TakeDefault.seen[-1][1:] == ((2,), 1.0)
    g = jax.grad(lambda x: TakeDefault.apply(x, scale=3.0).sum())(X)  # a keyword fills its slot
    np.testing.assert_allclose(g, [0.0, 0.0, 3.0])
    assert TakeDefault.seen[-1][1:] == ((2,), 3.0)
    g = jax.jit(jax.grad(lambda x: TakeDefault.apply(x, (0, 1)).sum()))(X)
    np.testing.assert_allclose(g, [1.0, 1.0, 0.0])


def test_defaults_under_vmap_jvp_and_vmap_of_grad():
    xs = jnp.stack([X, 2 * X])
    np.testing.assert_allclose(jax.vmap(TakeDefault.apply)(xs), xs[:, 2:3], rtol=1e-6)
    _, t = jax.jvp(TakeDefault.apply, (X,), (T,))
    np.testing.assert_allclose(t, T[2:3], rtol=1e-6)
    g = jax.vmap(jax.grad(lambda x: TakeDefault.apply(x, scale=2.0).sum()))(xs)
    np.testing.assert_allclose(g, jnp.array([[0.0, 0.0, 2.0]] * 2))


def test_missing_argument_names_the_function():
    with pytest.raises(TypeError, match=r"TakeDefault\.apply: missing a required argument: 'x'"):
        TakeDefault.apply()


# ----------------------------------------------------------------------------- save_for_forward (issue 15c)


class ExpFwd(Function):
    @staticmethod
    def forward(x):
        return jnp.exp(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output * 10.0)  # jvp reads this; distinguishable from backward's

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y

    @staticmethod
    def jvp(ctx, t):
        (y10,) = ctx.saved_tensors
        return t * y10


def test_save_for_forward_is_what_jvp_reads():
    _, t = jax.jvp(ExpFwd.apply, (X,), (T,))
    np.testing.assert_allclose(t, 10.0 * T * jnp.exp(X), rtol=1e-6)
    _, t = jax.jit(lambda x, t: jax.jvp(ExpFwd.apply, (x,), (t,)))(X, T)
    np.testing.assert_allclose(t, 10.0 * T * jnp.exp(X), rtol=1e-6)
    # backward still reads save_for_backward
    np.testing.assert_allclose(jax.grad(lambda x: ExpFwd.apply(x).sum())(X), jnp.exp(X), rtol=1e-6)
    xs = jnp.stack([X, T])
    _, tv = jax.vmap(lambda x: jax.jvp(ExpFwd.apply, (x,), (jnp.ones(3),)))(xs)
    np.testing.assert_allclose(tv, 10.0 * jnp.exp(xs), rtol=1e-6)


def test_save_for_forward_in_ctx_style_forward():
    class Sq(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            ctx.save_for_forward(3.0 * x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2.0 * g * x

        @staticmethod
        def jvp(ctx, t):
            (x3,) = ctx.saved_tensors
            return t * x3  # deliberately 3x instead of 2x: proves which tensors jvp saw

    _, t = jax.jvp(Sq.apply, (X,), (T,))
    np.testing.assert_allclose(t, 3.0 * X * T, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: Sq.apply(x).sum())(X), 2.0 * X, rtol=1e-6)


def test_keyword_argument_becomes_a_positional_input():
    seen = []

    class Mul(Function):
        @staticmethod
        def forward(x, k):
            return x * k

        @staticmethod
        def setup_context(ctx, inputs, output):
            seen.append(inputs)
            ctx.k = inputs[1]

        @staticmethod
        def backward(ctx, g):
            return g * ctx.k, None

    g = jax.grad(lambda x: Mul.apply(x, k=3.0).sum())(X)
    np.testing.assert_allclose(g, jnp.full(3, 3.0))
    assert seen[-1][1] == 3.0 and len(seen[-1]) == 2
