"""jaxops.vmap: register_vmap rules (API.md §5)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops


def _host_mul(ns: str, log: list[Any]) -> Any:
    @jaxops.custom_op(f"{ns}::mul", mutates_args=(), host=True)
    def mul(x: jax.Array, y: jax.Array) -> jax.Array:
        log.append(("kernel", np.shape(x), np.shape(y)))
        return np.asarray(x * y)

    mul.register_fake(lambda x, y: jax.ShapeDtypeStruct(jnp.broadcast_shapes(x.shape, y.shape), x.dtype))
    return mul


def _batched_mul_rule(op: Any, log: list[Any]) -> Any:
    def rule(info: Any, in_dims: tuple[Any, ...], x: jax.Array, y: jax.Array) -> Any:
        log.append(("rule", info.batch_size, in_dims))
        xb, yb = in_dims
        x = jnp.moveaxis(x, xb, -1) if xb is not None else x[..., None]
        y = jnp.moveaxis(y, yb, -1) if yb is not None else y[..., None]
        return jnp.moveaxis(op(x, y), -1, 0), 0

    return rule


def _mul_autograd(op: Any) -> None:
    def setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    def backward(ctx: Any, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, y = ctx.saved_tensors
        return g * y, g * x

    op.register_autograd(backward, setup_context=setup)


X = jnp.arange(1.0, 7.0).reshape(2, 3)
Y = jnp.arange(2.0, 8.0).reshape(2, 3)


def test_rule_gets_batch_size_in_dims_and_is_used() -> None:
    log: list[Any] = []
    mul = _host_mul("vr_basic", log)
    mul.register_vmap(_batched_mul_rule(mul, log))
    out = jax.vmap(mul, in_axes=(0, None))(X, Y[0])
    np.testing.assert_allclose(out, X * Y[0])
    assert ("rule", 2, (0, None)) in log
    assert [e for e in log if e[0] == "kernel"] == [("kernel", (3, 2), (3, 1))]  # one host call


def test_in_axes_out_axes_and_nested() -> None:
    log: list[Any] = []
    mul = _host_mul("vr_axes", log)
    mul.register_vmap(_batched_mul_rule(mul, log))
    got = jax.vmap(mul, in_axes=(1, 1), out_axes=1)(X, Y)
    np.testing.assert_allclose(got, X * Y)
    x3 = jnp.arange(24.0).reshape(2, 3, 4)
    got = jax.vmap(jax.vmap(mul, in_axes=(0, None)), in_axes=(2, None), out_axes=2)(x3, jnp.ones(3) * 2)
    np.testing.assert_allclose(got, x3 * 2)
    assert sum(1 for e in log if e[0] == "rule") >= 3  # one per level, nested levels included


@pytest.mark.parametrize("order", ["vmap_grad", "grad_vmap", "jit_vmap_grad", "jacrev"])
def test_rule_composes_with_registered_autograd(order: str) -> None:
    log: list[Any] = []
    mul = _host_mul(f"vr_ad_{order}", log)
    _mul_autograd(mul)
    mul.register_vmap(_batched_mul_rule(mul, log))

    def loss(x: jax.Array, y: jax.Array) -> jax.Array:
        return (mul(x, y) ** 2).sum()

    if order == "vmap_grad":
        got = jax.vmap(jax.grad(loss))(X, Y)
    elif order == "grad_vmap":
        got = jax.grad(lambda x: jax.vmap(loss)(x, Y).sum())(X)
    elif order == "jit_vmap_grad":
        got = jax.jit(jax.vmap(jax.grad(loss)))(X, Y)
    else:
        got = jnp.diagonal(jax.jacrev(jax.vmap(loss))(X, Y)).T
    np.testing.assert_allclose(got, 2 * X * Y * Y, rtol=1e-6)
    assert any(e[0] == "rule" for e in log)


def test_host_rule_without_autograd_uses_fallback_mode() -> None:
    log: list[Any] = []
    mul = _host_mul("vr_noad", log)
    mul.register_vmap(_batched_mul_rule(mul, log))
    with jaxops.autograd_fallback_mode("nothing"):
        g = jax.grad(lambda x: jax.vmap(mul)(x, Y).sum())(X)
    np.testing.assert_array_equal(g, jnp.zeros_like(X))
    with jaxops.autograd_fallback_mode("error"), pytest.raises(RuntimeError, match="no autograd formula"):
        jax.grad(lambda x: jax.vmap(mul)(x, Y).sum())(X)


def test_traceable_op_rule_replaces_native_batching_and_differentiates() -> None:
    calls: list[Any] = []

    @jaxops.custom_op("vr_trace::scale", mutates_args=())
    def scale(x: jax.Array, k: float) -> jax.Array:
        return x * k

    @scale.register_vmap
    def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array, k: float) -> Any:
        calls.append(in_dims)
        return jnp.moveaxis(x, in_dims[0], 0) * k, 0

    np.testing.assert_allclose(jax.vmap(scale, in_axes=(1, None))(X, 3.0), (X * 3).T)
    assert calls == [(0, None)]
    g = jax.grad(lambda x: jax.vmap(lambda r: scale(r, 3.0))(x).sum())(X)
    np.testing.assert_allclose(g, jnp.full_like(X, 3.0))


def test_reregistering_replaces_the_rule() -> None:
    log: list[Any] = []
    mul = _host_mul("vr_replace", log)
    mul.register_vmap(lambda info, in_dims, x, y: (jnp.zeros((info.batch_size, 3)), 0))
    np.testing.assert_array_equal(jax.vmap(mul)(X, Y), jnp.zeros((2, 3)))
    jaxops.register_vmap(mul, _batched_mul_rule(mul, log))  # functional form
    np.testing.assert_allclose(jax.vmap(mul)(X, Y), X * Y)
    assert "vmap" in repr(mul)


def test_rule_errors_reach_the_user() -> None:
    mul = _host_mul("vr_err", [])

    @mul.register_vmap
    def _(info: Any, in_dims: Any, x: Any, y: Any) -> Any:
        raise NotImplementedError("vr_err::mul is data-dependent and cannot be vmapped")

    with pytest.raises(NotImplementedError, match="data-dependent and cannot be vmapped"):
        jax.vmap(mul)(X, Y)
    with pytest.raises(NotImplementedError, match="cannot be vmapped"):
        jax.jit(jax.vmap(mul))(X, Y)


def test_bad_rule_outputs_name_the_op() -> None:
    mul = _host_mul("vr_bad", [])
    mul.register_vmap(lambda info, in_dims, x, y: x * y)
    with pytest.raises(ValueError, match=r"vr_bad::mul: a vmap rule must return a pair \(output, out_dims\)"):
        jax.vmap(mul)(X, Y)
    mul.register_vmap(lambda info, in_dims, x, y: (x * y, (0, 0)))
    with pytest.raises(ValueError, match="vr_bad::mul: the vmap rule returned out_dims"):
        jax.vmap(mul)(X, Y)
    mul.register_vmap(lambda info, in_dims, x, y: (x * y, 5))
    with pytest.raises(ValueError, match="batched along dim 5"):
        jax.vmap(mul)(X, Y)
    with pytest.raises(TypeError, match="vr_bad::mul: register_vmap expects a callable"):
        mul.register_vmap(3)


def test_kwargs_static_args_and_list_in_dims() -> None:
    seen: list[Any] = []

    @jaxops.custom_op("vr_list::wsum", mutates_args=(), host=True)
    def wsum(xs: Sequence[jax.Array], n: int, *, scale: float = 1.0) -> jax.Array:
        return np.asarray(sum(xs) * scale * n)

    wsum.register_fake(lambda xs, n, *, scale=1.0: jax.ShapeDtypeStruct(xs[0].shape, xs[0].dtype))

    @wsum.register_vmap
    def _(info: Any, in_dims: tuple[Any, ...], xs: Sequence[jax.Array], n: int, *, scale: float) -> Any:
        seen.append((in_dims, n, scale))
        xs = [jnp.broadcast_to(x, (info.batch_size, *x.shape)) if d is None else x for x, d in zip(xs, in_dims[0])]
        return wsum(xs, n, scale=scale), 0

    got = jax.vmap(lambda a, b: wsum([a, b, Y[0]], 2, scale=0.5), in_axes=(0, None))(X, Y[1])
    np.testing.assert_allclose(got, (X + Y[1] + Y[0]) * 0.5 * 2)
    assert seen[0] == (([0, None, None], None), 2, 0.5)


def test_without_rule_host_ops_use_vmap_method() -> None:
    seq_log: list[Any] = []
    seq = _host_mul("vr_seq", seq_log)
    np.testing.assert_allclose(jax.vmap(seq)(X, Y), X * Y)
    assert len(seq_log) == 2  # sequential: once per example

    log: list[Any] = []

    @jaxops.custom_op("vr_expand::mul", mutates_args=(), host=True, vmap_method="expand_dims")
    def mul(x: jax.Array, y: jax.Array) -> jax.Array:
        log.append(np.shape(x))
        return np.asarray(x * y)

    mul.register_fake(lambda x, y: jax.ShapeDtypeStruct(jnp.broadcast_shapes(x.shape, y.shape), x.dtype))
    np.testing.assert_allclose(jax.vmap(mul)(X, Y), X * Y)
    assert log == [(2, 3)]  # one call with the whole batch


def test_without_rule_traceable_ops_batch_natively() -> None:
    @jaxops.custom_op("vr_native::axpy", mutates_args=())
    def axpy(a: float, x: jax.Array, y: jax.Array) -> jax.Array:
        return a * x + y

    np.testing.assert_allclose(jax.vmap(lambda x: axpy(2.0, x, Y[0]))(X), 2 * X + Y[0])
    jaxpr = str(jax.make_jaxpr(jax.vmap(lambda x: axpy(2.0, x, Y[0])))(X))
    assert "custom_vmap" not in jaxpr


def test_rule_for_a_mutating_op() -> None:
    log: list[Any] = []

    @jaxops.custom_op("vr_mut::add_", mutates_args={"x"}, host=True)
    def add_(x: jax.Array, y: jax.Array) -> None:
        log.append(np.shape(x))
        x += y

    @add_.register_vmap
    def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array, y: jax.Array) -> Any:
        x = jnp.moveaxis(x, in_dims[0], 0)
        y = jnp.moveaxis(y, in_dims[1], 0) if in_dims[1] is not None else jnp.broadcast_to(y, x.shape)
        return add_(x, y), 0

    np.testing.assert_allclose(jax.vmap(add_, in_axes=(0, None))(X, Y[0]), X + Y[0])
    assert log == [(2, 3)]


def _host_double(name: str):
    @jaxops.custom_op(name, mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        return x * 2

    return op


def test_vmap_rule_returning_the_wrong_batch_size_raises():
    @jaxops.custom_op("w2v::vbs", mutates_args=())
    def v(x: jax.Array) -> jax.Array:
        return x + 1

    @v.register_vmap
    def _(info, in_dims, x):
        return x[:1] + 1, 0

    with pytest.raises(ValueError, match=r"w2v::vbs: the vmap rule returned output leaf 0 with 1 entries.*batch size 2"):
        jax.vmap(v)(jnp.ones((2, 3)))


def test_host_op_vmapped_without_a_rule_warns_once_naming_register_vmap():
    op = _host_double("w2v::novmap")
    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    xs = jnp.ones((16, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(jax.vmap(op)(xs[:4]), 2 * xs[:4])  # a few calls: no cliff, no warning
    with pytest.warns(UserWarning, match=r"w2v::novmap: vmap of this host op calls its kernel once per example \(16 host calls here\).*register_vmap.*vmap_method"):
        np.testing.assert_allclose(jax.vmap(op)(xs), 2 * xs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.vmap(op)(xs + 1)  # once per op


def test_host_op_inside_an_equinox_mlp_warns():
    op = _host_double("w2v::act")
    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    mlp = eqx.nn.MLP(3, 2, 16, 1, activation=op, key=jax.random.key(0))  # activation vmapped over 16 features
    with pytest.warns(UserWarning, match="register_vmap"):
        jax.vmap(mlp)(jnp.ones((5, 3)))
