"""mutates_args functionalized: copy-outs, structure, jax.Ref write-back, aliasing, transforms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxops

X = jnp.arange(1.0, 4.0)
Y = jnp.array([10.0, 20.0, 30.0])


@jaxops.custom_op("mut_t::add_", mutates_args={"x"}, host=True)
def host_add_(x: jax.Array, y: jax.Array) -> None:
    assert x.flags.writeable and not y.flags.writeable
    x += y


@jaxops.custom_op("mut_t::sgd_", mutates_args={"p"})
def sgd_(p: jax.Array, g: jax.Array, lr: float) -> None:
    assert isinstance(p, jax.Ref) and not isinstance(g, jax.Ref)
    p[...] = p[...] - lr * g


@jaxops.custom_op("mut_t::scaled_add_", mutates_args={"x"}, host=True)
def scaled_add_(x: jax.Array, y: jax.Array) -> jax.Array:
    x += y
    return np.asarray(x.sum())


scaled_add_.register_fake(lambda x, y: jax.ShapeDtypeStruct((), x.dtype))


@jaxops.custom_op("mut_t::two_", mutates_args={"a", "c"})
def two_(a: jax.Array, b: jax.Array, c: jax.Array | None) -> jax.Array:
    a[...] = a[...] + b
    if c is not None:
        c[...] = 2 * c[...]
    return b * 3


@jaxops.custom_op("mut_t::lst_", mutates_args={"xs"}, host=True)
def lst_(xs: Sequence[jax.Array | None]) -> None:
    for e in xs:
        if e is not None:
            e *= 2


def _ref_host(x: jax.Array, y: jax.Array) -> jax.Array:
    return x + y


def test_declared_none_returns_the_new_value_and_input_is_unchanged() -> None:
    before = np.asarray(X).copy()
    np.testing.assert_allclose(host_add_(X, Y), X + Y)
    np.testing.assert_array_equal(np.asarray(X), before)
    np.testing.assert_allclose(sgd_(X, Y, 0.1), X - 0.1 * Y, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(X), before)


def test_numpy_inputs_are_not_modified() -> None:
    x = np.arange(3.0, dtype=np.float32)
    out = host_add_(x, np.ones(3, np.float32))
    np.testing.assert_array_equal(x, np.arange(3.0))
    np.testing.assert_allclose(out, np.arange(3.0) + 1)


def test_declared_return_gives_result_and_new_values() -> None:
    out, new = scaled_add_(X, Y)
    np.testing.assert_allclose(out, (X + Y).sum())
    np.testing.assert_allclose(new, X + Y)
    out, new = jax.jit(scaled_add_)(X, Y)
    np.testing.assert_allclose(new, X + Y)


def test_several_mutated_args_and_optional_none_keep_structure() -> None:
    out, (a, c) = two_(X, Y, X)
    np.testing.assert_allclose(out, 3 * Y)
    np.testing.assert_allclose(a, X + Y)
    np.testing.assert_allclose(c, 2 * X)
    out, (a, c) = two_(X, Y, None)
    assert c is None
    out, (a, c) = jax.jit(two_, static_argnums=())(X, Y, None)
    assert c is None and a.shape == (3,)


def test_list_with_none_holes() -> None:
    for call in (lst_, jax.jit(lst_)):
        new = call([X, None, Y])
        assert isinstance(new, list) and new[1] is None
        np.testing.assert_allclose(new[0], 2 * X)
        np.testing.assert_allclose(new[2], 2 * Y)


def test_unknown_mutates_every_array_param() -> None:
    @jaxops.custom_op("mut_t::unk", mutates_args="unknown", host=True)
    def unk(x: jax.Array, y: jax.Array, k: int) -> None:
        x -= k
        y += k

    assert unk.schema == "(Tensor(a0!) x, Tensor(a1!) y, SymInt k) -> ()"
    a, b = unk(X, Y, 1)
    np.testing.assert_allclose(a, X - 1)
    np.testing.assert_allclose(b, Y + 1)


@pytest.mark.parametrize("op", [host_add_, "traceable"], ids=["host", "traceable"])
def test_ref_argument_is_updated_in_place(op: Any) -> None:
    call = (lambda r, y: sgd_(r, y, -1.0)) if op == "traceable" else host_add_
    r = jax.new_ref(X)
    out = call(r, Y)
    np.testing.assert_allclose(r[...], X + Y)
    np.testing.assert_allclose(out, X + Y)

    @jax.jit
    def f(x: jax.Array, y: jax.Array) -> jax.Array:
        ref = jax.new_ref(x)
        call(ref, y)
        call(ref, y)
        return ref[...]

    np.testing.assert_allclose(f(X, Y), X + 2 * Y)


def test_list_of_refs_is_updated() -> None:
    r0, r2 = jax.new_ref(X), jax.new_ref(Y)
    lst_([r0, None, r2])
    np.testing.assert_allclose(r0[...], 2 * X)
    np.testing.assert_allclose(r2[...], 2 * Y)


@pytest.mark.parametrize("op", ["host", "traceable"])
@pytest.mark.parametrize("transform", ["jit", "vmap", "grad", "checkpoint_grad", "eval_shape"])
def test_transforms(op: str, transform: str) -> None:
    f = host_add_ if op == "host" else (lambda x, y: sgd_(x, y, -1.0))
    if transform == "jit":
        np.testing.assert_allclose(jax.jit(f)(X, Y), X + Y)
    elif transform == "vmap":
        xs = jnp.stack([X, 2 * X])
        np.testing.assert_allclose(jax.vmap(f, in_axes=(0, None))(xs, Y), xs + Y)
    elif transform == "grad":
        loss = lambda x: (f(x, Y) ** 2).sum()  # noqa: E731
        if op == "host":
            with jaxops.autograd_fallback_mode("nothing"):
                np.testing.assert_array_equal(jax.grad(loss)(X), jnp.zeros(3))
        else:
            np.testing.assert_allclose(jax.grad(loss)(X), 2 * (X + Y))
    elif transform == "checkpoint_grad":
        loss = jax.checkpoint(lambda x: (f(x, Y) ** 2).sum())
        if op == "host":  # no formula: the fallback's zero gradient, through checkpoint
            with jaxops.autograd_fallback_mode("nothing"):
                np.testing.assert_array_equal(jax.jit(jax.grad(loss))(X), jnp.zeros(3))
        else:
            np.testing.assert_allclose(jax.jit(jax.grad(loss))(X), 2 * (X + Y))
    else:
        assert jax.eval_shape(f, X, Y) == jax.ShapeDtypeStruct((3,), jnp.float32)


def test_optimizer_update_in_a_scanned_training_loop() -> None:
    target = jnp.array([1.0, -2.0, 0.5])

    def train(p0: jax.Array) -> jax.Array:
        def step(p: jax.Array, _: Any) -> tuple[jax.Array, jax.Array]:
            loss, g = jax.value_and_grad(lambda q: ((q - target) ** 2).sum())(p)
            return sgd_(p, g, 0.25), loss

        p, losses = lax.scan(step, p0, None, length=20)
        return p

    p = jax.jit(train)(jnp.zeros(3))
    np.testing.assert_allclose(p, target, atol=1e-5)
    # gradient through the whole loop (and checkpointed), vs the pure-jnp update
    def pure(p0: jax.Array) -> jax.Array:
        def step(p: jax.Array, _: Any) -> tuple[jax.Array, None]:
            return p - 0.25 * 2 * (p - target), None

        return lax.scan(step, p0, None, length=20)[0]

    g_op = jax.grad(lambda q: jax.checkpoint(train)(q).sum())(jnp.ones(3))
    np.testing.assert_allclose(g_op, jax.grad(lambda q: pure(q).sum())(jnp.ones(3)), atol=1e-6)


def test_host_mutating_op_in_scan() -> None:
    out = lax.scan(lambda c, _: (host_add_(c, Y), None), X, None, length=3)[0]
    np.testing.assert_allclose(out, X + 3 * Y)


def test_mutating_op_with_registered_autograd() -> None:
    @jaxops.custom_op("mut_t::sin_", mutates_args={"x"}, host=True)
    def sin_(x: jax.Array) -> None:
        np.sin(x, out=x)

    sin_.register_autograd(
        lambda ctx, g: g * jnp.cos(ctx.saved_tensors[0]),
        setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]),
    )
    np.testing.assert_allclose(jax.grad(lambda x: sin_(x).sum())(X), jnp.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda x: sin_(x).sum()))(jnp.stack([X, Y])), jnp.cos(jnp.stack([X, Y])), rtol=1e-5)


def test_host_output_aliasing_an_input_raises() -> None:
    @jaxops.custom_op("mut_t::alias", mutates_args={"x"}, host=True)
    def alias(x: jax.Array) -> jax.Array:
        x += 1
        return x

    alias.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    with pytest.raises(RuntimeError, match="mut_t::alias: an output of the kernel aliases an input; outputs may not alias"):
        alias(X)
    with pytest.raises(Exception, match="may not alias"):
        jax.block_until_ready(jax.jit(alias)(X))  # (result, new x): a tuple; a GPU reports the callback's error here

    @jaxops.custom_op("mut_t::alias_ro", mutates_args={"x"}, host=True)
    def alias_ro(x: jax.Array, y: jax.Array) -> jax.Array:
        return y[:2]

    alias_ro.register_fake(lambda x, y: jax.ShapeDtypeStruct((2,), y.dtype))
    with pytest.raises(RuntimeError, match="may not alias"):
        alias_ro(X, Y)


def test_traceable_output_identical_to_an_input_raises() -> None:
    @jaxops.custom_op("mut_t::alias_t", mutates_args={"x"})
    def alias_t(x: jax.Array, y: jax.Array) -> jax.Array:
        x[...] = y
        return y

    with pytest.raises(RuntimeError, match="mut_t::alias_t: an output of the kernel is one of its inputs; outputs may not alias"):
        alias_t(X, Y)

    @jaxops.custom_op("mut_t::alias_ref", mutates_args={"x"})
    def alias_ref(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(RuntimeError, match="may not alias"):
        jax.jit(alias_ref)(X)


def test_writing_a_non_mutated_host_input_raises() -> None:
    @jaxops.custom_op("mut_t::sneaky", mutates_args={"x"}, host=True)
    def sneaky(x: jax.Array, y: jax.Array) -> None:
        y += 1

    with pytest.raises(ValueError, match="mut_t::sneaky: the host kernel raised ValueError: .*read-only"):
        sneaky(X, Y)
