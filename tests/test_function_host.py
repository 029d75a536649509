"""NumPy inside a Function: ``custom_vjp.host`` (issue 15d/e) and ``once_differentiable``
on a host backward (issue 17.2)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from custom_vjp import Function, host, once_differentiable

X = jnp.array([0.1, 0.7, 1.3], dtype=jnp.float32)
XS = jnp.stack([X, 2 * X])
INTERNAL = re.compile(r"custom_vmap_call|custom_jvp_call|Transpose rule|function_lin|pure_callback'|_cvjp")


class NumpySin(Function):
    """A literal NumPy port plus one ``@host`` line on each NumPy function."""

    @staticmethod
    @host(out_shapes=lambda x: x)
    def forward(x):
        return np.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return host(lambda g, x: g * np.cos(x))(g, x)


class LiteralPort(NumpySin):
    """The same port without ``host``: NumPy cannot read a tracer."""

    @staticmethod
    def forward(x):
        return jnp.asarray(np.sin(np.asarray(x)))


def test_literal_numpy_port_fails_under_jit_and_host_fixes_it():
    np.testing.assert_allclose(LiteralPort.apply(X), np.sin(X), rtol=1e-6)  # eager is fine
    with pytest.raises(jax.errors.TracerArrayConversionError):
        jax.jit(LiteralPort.apply)(X)
    np.testing.assert_allclose(jax.jit(NumpySin.apply)(X), np.sin(X), rtol=1e-6)


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_host_function_values_and_gradients(transform):
    np.testing.assert_allclose(transform(NumpySin.apply)(X), np.sin(X), rtol=1e-6)
    np.testing.assert_allclose(transform(jax.vmap(NumpySin.apply))(XS), np.sin(XS), rtol=1e-6)
    grad = jax.grad(lambda x: NumpySin.apply(x).sum())
    np.testing.assert_allclose(transform(grad)(X), np.cos(X), rtol=1e-6)


def test_vmap_and_jit_of_grad_of_a_host_function():
    grad = jax.grad(lambda x: NumpySin.apply(x).sum())
    np.testing.assert_allclose(jax.vmap(grad)(XS), np.cos(XS), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(grad)(X), np.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(grad))(XS), np.cos(XS), rtol=1e-6)


def test_host_with_pytree_args_static_args_and_several_outputs():
    calls = []

    @host(out_shapes=lambda p, k: (jax.ShapeDtypeStruct(p["a"].shape, p["a"].dtype), jax.ShapeDtypeStruct((), jnp.int32)))
    def stats(p, k):
        calls.append(type(p["a"]))
        return p["a"] * k + p["b"], np.int64(np.argmax(p["a"]))

    p = {"a": X, "b": jnp.float32(1.0)}
    for fn in (stats, jax.jit(stats, static_argnums=1)):
        y, i = fn(p, 2)
        np.testing.assert_allclose(y, X * 2 + 1, rtol=1e-6)
        assert int(i) == 2 and i.dtype == jnp.int32  # cast to the declared dtype
    assert set(calls) == {np.ndarray}  # arrays reach the function as NumPy arrays


def test_host_default_out_shapes_and_vmap_method():
    calls = []

    def tally(x):
        calls.append(x.shape)
        return x * 2

    seq = host(tally)  # out_shapes=None: like the first array argument
    np.testing.assert_allclose(jax.vmap(seq)(XS), 2 * XS)
    assert calls[-2:] == [(3,), (3,)]  # sequential: once per example
    calls.clear()
    expand = host(tally, vmap_method="expand_dims")
    np.testing.assert_allclose(jax.vmap(expand)(XS), 2 * XS)
    assert calls == [(2, 3)]  # one call with the batch axis


def test_host_output_shape_mismatch_names_the_function():
    bad = host(lambda x: x[:2], lambda x: x)
    with pytest.raises(ValueError, match=r"custom_vjp\.host\(.*<lambda>\): output 0 has shape \[2\] but out_shapes declares \[3\]"):
        bad(X)
    with pytest.raises(Exception, match=r"output 0 has shape \[2\] but out_shapes declares \[3\]"):
        jax.jit(bad)(X).block_until_ready()


def test_host_argument_errors():
    with pytest.raises(ValueError, match=r"vmap_method must be one of"):
        host(np.sin, vmap_method="batched")
    with pytest.raises(TypeError, match=r"custom_vjp\.host\(.*\): out_shapes is required when no argument is an array"):
        host(lambda k: np.ones(k))(3)
    with pytest.raises(TypeError, match=r"out_shapes must give jax\.ShapeDtypeStruct"):
        host(np.sin, lambda x: "float32")(X)


def test_differentiating_a_host_function_directly_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"custom_vjp\.host\(sin\) cannot be differentiated by JAX: it runs NumPy on the host\. Call it from a custom_vjp\.Function"):
        jax.grad(lambda x: host(np.sin)(x).sum())(X)


def test_second_order_through_a_host_backward_names_host():
    g2 = jax.grad(lambda x: jax.grad(lambda x: NumpySin.apply(x).sum())(x).sum())
    with pytest.raises(RuntimeError, match=r"cannot be differentiated by JAX") as info:
        g2(X)
    assert not INTERNAL.search(str(info.value))


@pytest.mark.parametrize("fn", [NumpySin], ids=["host-backward"])
def test_forward_mode_through_a_host_backward_says_what_to_do(fn):
    for call in (lambda: jax.jvp(fn.apply, (X,), (X,)), lambda: jax.jacfwd(fn.apply)(X)):
        with pytest.raises(NotImplementedError, match=r"Trying to use forward AD with NumpySin that does not support it") as info:
            call()
        msg = str(info.value)
        assert "Define jvp(ctx, *tangents) on NumpySin" in msg
        assert not INTERNAL.search(msg), msg


def test_forward_mode_message_with_a_vmap_staticmethod_has_no_internal_names():
    class HostBwVmap(Function):
        @staticmethod
        def forward(x):
            return jnp.sin(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return jax.pure_callback(lambda g, x: np.asarray(g * np.cos(x)), jax.ShapeDtypeStruct(g.shape, g.dtype), g, x, vmap_method="sequential")

        @staticmethod
        def vmap(info, in_dims, x):
            return HostBwVmap.apply(jnp.moveaxis(x, in_dims[0], 0)), 0

    np.testing.assert_allclose(jax.vmap(jax.grad(lambda x: HostBwVmap.apply(x).sum()))(XS), np.cos(XS), rtol=1e-6)
    for call in (
        lambda: jax.jvp(HostBwVmap.apply, (X,), (X,)),
        lambda: jax.jvp(jax.vmap(HostBwVmap.apply), (XS,), (XS,)),
        lambda: jax.hessian(lambda x: HostBwVmap.apply(x).sum())(X),
    ):
        with pytest.raises(NotImplementedError, match="Trying to use forward AD with HostBwVmap") as info:
            call()
        assert not INTERNAL.search(str(info.value)), str(info.value)


def test_a_user_jvp_makes_a_host_function_forward_differentiable():
    class WithJvp(NumpySin):
        @staticmethod
        def jvp(ctx, t):
            (x,) = ctx.saved_tensors
            return host(lambda t, x: t * np.cos(x))(t, x)

    _, t = jax.jvp(WithJvp.apply, (X,), (jnp.ones(3),))
    np.testing.assert_allclose(t, np.cos(X), rtol=1e-6)
    _, t = jax.jit(lambda x: jax.jvp(WithJvp.apply, (x,), (jnp.ones(3),)))(X)
    np.testing.assert_allclose(t, np.cos(X), rtol=1e-6)


# ----------------------------------------------------------------------------- once_differentiable + pure_callback (17.2)


class OnceCallback(Function):
    @staticmethod
    def forward(x):
        return jnp.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.scale = 2.0 * jnp.ones(())  # an array attribute is guarded too

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return jax.pure_callback(
            lambda g, x, s: np.asarray(g * np.cos(x) * s / 2, dtype=np.float32),
            jax.ShapeDtypeStruct(g.shape, g.dtype),
            g,
            x,
            ctx.scale,
            vmap_method="sequential",
        )


class OnceHost(OnceCallback):
    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return host(lambda g, x: g * np.cos(x))(g, x)


@pytest.mark.parametrize("fn", [OnceCallback, OnceHost], ids=["pure_callback", "host"])
def test_once_differentiable_host_backward_first_order(fn):
    grad = jax.grad(lambda x: fn.apply(x).sum())
    np.testing.assert_allclose(grad(X), np.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(grad)(X), np.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(grad)(XS), np.cos(XS), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(grad))(XS), np.cos(XS), rtol=1e-6)


@pytest.mark.parametrize("fn", [OnceCallback, OnceHost], ids=["pure_callback", "host"])
def test_once_differentiable_host_backward_twice_raises(fn):
    inner = jax.grad(lambda x: fn.apply(x).sum())
    with pytest.raises(RuntimeError, match="trying to differentiate twice a function that was marked with @once_differentiable"):
        jax.grad(lambda x: inner(x).sum())(X)
    with pytest.raises(RuntimeError, match="trying to differentiate twice"):
        jax.jit(jax.grad(lambda x: inner(x).sum()))(X)
    with pytest.raises(RuntimeError, match="trying to differentiate twice"):
        jax.grad(jax.grad(lambda x: fn.apply(x)[0]))(X)
