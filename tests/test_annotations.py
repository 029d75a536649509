"""Fakes and shape checks derived from jaxtyping annotations.

This module uses ``from __future__ import annotations``, so every annotation
here is a string resolved in this module (the case the brief asks for).
"""

# ruff: noqa: F722, F821, UP037 - jaxtyping shape strings inside (string) annotations

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float, Int, Shaped

import jaxops
from jaxops import annotations

S = jax.ShapeDtypeStruct


@pytest.fixture(scope="module")
def matmul():
    @jaxops.custom_op("anntest::matmul", mutates_args=(), host=True)
    def matmul(a: Float[Array, "m k"], b: Float[Array, "k n"]) -> Float[Array, "m n"]:
        return a @ b

    return matmul


def test_derived_fake_gives_shape_and_float_dtype(matmul):
    assert matmul.definition.fake is None and matmul.definition.derived_fake is not None
    out = jax.eval_shape(matmul, S((2, 3), jnp.float32), S((3, 5), jnp.float32))
    assert out == S((2, 5), jnp.float32)
    out16 = jax.eval_shape(matmul, S((2, 3), jnp.float16), S((3, 5), jnp.float16))
    assert out16.dtype == jnp.float16
    # jit of a host op needs the fake's shapes; the kernel runs for real
    y = jax.jit(matmul)(jnp.ones((2, 3)), jnp.ones((3, 5)))
    np.testing.assert_allclose(np.asarray(y), 3.0 * np.ones((2, 5)))


def test_inconsistent_dimension_raises_type_error_naming_op_param_and_dim(matmul):
    msg = "anntest::matmul: parameter 'b' dimension 'k' is 4 but was bound to 3 by parameter 'a'"
    with pytest.raises(TypeError, match=msg):
        jax.eval_shape(matmul, S((2, 3), jnp.float32), S((4, 5), jnp.float32))
    with pytest.raises(TypeError, match=msg):  # eager host call
        matmul(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
    with pytest.raises(TypeError, match=msg):
        jax.jit(matmul)(jnp.ones((2, 3)), jnp.ones((4, 5)))


def test_rank_mismatch_raises(matmul):
    with pytest.raises(TypeError, match=r"anntest::matmul: parameter 'a' has rank 3 .* expects rank 2"):
        jax.eval_shape(matmul, S((2, 3, 1), jnp.float32), S((3, 5), jnp.float32))


def test_traceable_op_is_checked_under_jit():
    @jaxops.custom_op("anntest::add", mutates_args=())
    def add(x: Float[Array, "n"], y: Float[Array, "n"]) -> Float[Array, "n"]:
        return x + y

    with pytest.raises(TypeError, match="anntest::add: parameter 'y' dimension 'n' is 1 but was bound to 3 by parameter 'x'"):
        jax.jit(add)(jnp.ones(3), jnp.ones(1))
    np.testing.assert_allclose(np.asarray(add(jnp.ones(3), jnp.ones(3))), 2 * np.ones(3))


def test_int_and_mixed_dtypes():
    @jaxops.custom_op("anntest::argtop", mutates_args=(), host=True)
    def argtop(x: Float[Array, "b n"], k: int) -> Int[Array, "b k"]:
        return np.argsort(-x, axis=-1)[:, :k].astype(np.int32)

    out = jax.eval_shape(lambda x: argtop(x, 2), S((4, 7), jnp.float32))
    assert out == S((4, 2), jnp.int32)  # k bound from the int parameter; Int from no int input -> int32

    @jaxops.custom_op("anntest::scale", mutates_args=(), host=True)
    def scale(x: Float[Array, "n"], i: Int[Array, "n"]) -> Float[Array, "n"]:
        return x * i

    assert jax.eval_shape(scale, S((3,), jnp.bfloat16), S((3,), jnp.int32)).dtype == jnp.bfloat16

    @jaxops.custom_op("anntest::shaped", mutates_args=(), host=True)
    def shaped(x: Shaped[Array, "n"], y: Shaped[Array, "n"]) -> Shaped[Array, "n"]:
        return x + y

    assert jax.eval_shape(shaped, S((3,), jnp.int8), S((3,), jnp.int16)).dtype == jnp.int16


def test_variadic_fixed_symbolic_broadcast_and_tuple_returns():
    @jaxops.custom_op("anntest::split", mutates_args=(), host=True)
    def split(x: Float[Array, "*batch 2*n"]) -> tuple[Float[Array, "*batch n"], Float[Array, "*batch n"]]:
        h = x.shape[-1] // 2
        return x[..., :h].copy(), x[..., h:].copy()

    # '2*n' cannot bind n by itself: the fake is not derivable, but the call is still checked
    assert split.definition.derived_fake is None and split.definition.shape_check is not None

    @jaxops.custom_op("anntest::halves", mutates_args=(), host=True)
    def halves(x: Float[Array, "*batch n"], y: Float[Array, "*batch 2*n"]) -> tuple[
        Float[Array, "*batch n"], Float[Array, "3"]
    ]:
        return x.copy(), np.zeros(3, x.dtype)

    a, b = jax.eval_shape(halves, S((5, 6, 2), jnp.float32), S((5, 6, 4), jnp.float32))
    assert a == S((5, 6, 2), jnp.float32) and b == S((3,), jnp.float32)
    with pytest.raises(TypeError, match=r"anntest::halves: parameter 'y' dimension '2\*n' is 5"):
        jax.eval_shape(halves, S((5, 6, 2), jnp.float32), S((5, 6, 5), jnp.float32))
    with pytest.raises(TypeError, match=r"anntest::halves: parameter 'y' dimensions '\*batch' are \(5, 7\) but were bound to \(5, 6\) by parameter 'x'"):
        jax.eval_shape(halves, S((5, 6, 2), jnp.float32), S((5, 7, 4), jnp.float32))

    @jaxops.custom_op("anntest::fixed", mutates_args=(), host=True)
    def fixed(x: Float[Array, "3 n"]) -> Float[Array, "n"]:
        return x.sum(0)

    with pytest.raises(TypeError, match=r"anntest::fixed: parameter 'x' dimension 0 is 4 but its annotation '3 n' fixes it to 3"):
        jax.eval_shape(fixed, S((4, 2), jnp.float32))

    @jaxops.custom_op("anntest::bcast", mutates_args=(), host=True)
    def bcast(x: Float[Array, "#n"], y: Float[Array, "#n"]) -> Float[Array, "n"]:
        return x + y

    assert jax.eval_shape(bcast, S((1,), jnp.float32), S((4,), jnp.float32)).shape == (4,)

    @jaxops.custom_op("anntest::ellipsis", mutates_args=(), host=True)
    def ellipsis(x: Float[Array, "..."], y: Float[Array, "..."]) -> Float[Array, "..."]:
        return x + y

    assert jax.eval_shape(ellipsis, S((2, 1), jnp.float32), S((3,), jnp.float32)).shape == (2, 3)
    assert ellipsis.definition.shape_check is None  # '...' constrains nothing


def test_symbolic_batch_dims_flow_through(matmul):
    b, = jax.export.symbolic_shape("b")
    out = jax.eval_shape(matmul, S((b, 3), jnp.float32), S((3, 5), jnp.float32))
    assert out.shape == (b, 5)


def test_no_shapes_means_no_fake_and_no_checker():
    @jaxops.custom_op("anntest::plain", mutates_args=(), host=True)
    def plain(x: jax.Array) -> jax.Array:
        return x

    assert plain.definition.derived_fake is None and plain.definition.shape_check is None
    assert annotations.derive_fake(plain.definition, plain.definition.py_fn) is None
    with pytest.raises(RuntimeError, match="no fake impl"):
        jax.eval_shape(plain, S((2,), jnp.float32))

    @jaxops.custom_op("anntest::unbound", mutates_args=(), host=True)
    def unbound(x: Float[Array, "n"]) -> Float[Array, "m"]:
        return x

    assert unbound.definition.derived_fake is None  # 'm' is bound by nothing
    assert unbound.definition.shape_check is not None


def test_registered_fake_wins_over_derived():
    @jaxops.custom_op("anntest::wins", mutates_args=(), host=True)
    def wins(x: Float[Array, "n"]) -> Float[Array, "n"]:
        return x

    @wins.register_fake
    def _(x):
        return S((7,), jnp.float32)

    assert jax.eval_shape(wins, S((2,), jnp.float32)).shape == (7,)


def test_array_spec_parses_dimension_kinds():
    spec = annotations.array_spec(Float[Array, "*batch m 3 _"])
    assert [k for k, _, _ in spec.dims] == ["var", "named", "fixed", "anon"]
    assert spec.min_rank == 3 and spec.variadic and "float32" in spec.dtypes
    assert annotations.array_spec(Shaped[Array, "n"]).dtypes is None
    assert annotations.array_spec(Float[Array, "n"] | None).text == "n"
    assert annotations.array_spec(int) is None


def test_planning_a_host_op_without_register_fake(matmul):
    b, = jax.export.symbolic_shape("b")
    p = jaxops.plan(lambda x, w: matmul(x, w), S((b, 3), jnp.float32), S((3, 5), jnp.float32))
    assert p.records[0]["outputs"] == [S((b, 5), jnp.float32)]
