"""jaxops.op: custom_op and the CustomOp facade: declaration, naming, validation, redefinition (API.md §1)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops


@pytest.fixture
def scale_add():
    @jaxops.custom_op("t_core::scale_add", mutates_args=())
    def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x + alpha * y

    return scale_add


X = jnp.arange(4.0)
Y = jnp.ones(4)


def _hlo_ops(fn, *args):
    text = jax.jit(fn).lower(*args).compile().as_text()
    ops = re.findall(r"=\s*[a-z0-9\[\]{},]+\s+([a-z\-]+)\(", text)
    return sorted(o for o in ops if o not in ("parameter", "tuple", "get-tuple-element"))


def test_schema_name_and_repr(scale_add):
    assert scale_add.schema == "(Tensor x, Tensor y, float alpha=1.0) -> Tensor"
    assert scale_add.name == "t_core::scale_add"
    r = repr(scale_add)
    assert "t_core::scale_add" in r and "Tensor x" in r


def test_lookup_by_name(scale_add):
    assert jaxops.ops.t_core.scale_add.default is scale_add
    np.testing.assert_allclose(jaxops.ops.t_core.scale_add(X, Y, alpha=2.0), X + 2 * Y)
    assert jaxops.ops.t_core.scale_add.schema == scale_add.schema
    with pytest.raises(AttributeError, match="t_core::nope"):
        jaxops.ops.t_core.nope  # noqa: B018


def test_name_errors():
    def f(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(ValueError, match="namespace"):
        jaxops.custom_op("nonamespace", f, mutates_args=())
    for ns in ("jax", "lax", "jnp", "aten", "prim", "prims"):
        with pytest.raises(ValueError, match="is a reserved namespace"):
            jaxops.custom_op(f"{ns}::foo", f, mutates_args=())


def test_mutates_args_is_required_and_checked():
    def f(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(TypeError):
        jaxops.custom_op("t_core::f", f)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="mutates_args"):
        jaxops.custom_op("t_core::f", f, mutates_args="x")


def test_explicit_schema_must_agree_with_mutates_args():
    def f(x: jax.Array) -> jax.Array:
        return x

    op = jaxops.custom_op("t_core::explicit", f, mutates_args=(), schema="(Tensor x) -> Tensor")
    assert op.schema == "(Tensor x) -> Tensor"
    with pytest.raises(ValueError, match="the op mutates"):
        jaxops.custom_op("t_core::explicit2", f, mutates_args=(), schema="(Tensor(a0!) x) -> Tensor")
    with pytest.raises(ValueError, match="the op mutates"):
        jaxops.custom_op("t_core::explicit3", f, mutates_args={"x"}, schema="(Tensor x) -> Tensor")


def test_kwarg_only_tensor_is_not_implemented():
    def f(x: jax.Array, *, y: jax.Array) -> jax.Array:
        return x + y

    with pytest.raises(NotImplementedError, match="kwarg-only Tensor args"):
        jaxops.custom_op("t_core::kwt", f, mutates_args=())


def test_keyword_only_scalar_is_fine():
    @jaxops.custom_op("t_core::kws", mutates_args=())
    def f(x: jax.Array, *, scale: float = 2.0) -> jax.Array:
        return x * scale

    assert f.schema == "(Tensor x, *, float scale=2.0) -> Tensor"
    np.testing.assert_allclose(f(X), 2 * X)
    np.testing.assert_allclose(f(X, scale=3.0), 3 * X)
    with pytest.raises(TypeError, match=r"t_core::kws\(\) takes 1 positional argument"):
        f(X, 3.0)


def test_redefinition_replaces():
    @jaxops.custom_op("t_core::redef", mutates_args=())
    def a(x: jax.Array) -> jax.Array:
        return x + 1

    @jaxops.custom_op("t_core::redef", mutates_args=())
    def b(x: jax.Array) -> jax.Array:
        return x + 2

    np.testing.assert_allclose(jaxops.ops.t_core.redef(X), X + 2)
    assert jaxops.ops.t_core.redef.default is b


def test_infer_schema_is_exported():
    def f(x: jax.Array, n: int = 2) -> jax.Array:
        return x

    assert jaxops.infer_schema(f, mutates_args=()) == "(Tensor x, SymInt n=2) -> Tensor"
    assert jaxops.infer_schema(f, mutates_args=(), op_name="myop") == "myop(Tensor x, SymInt n=2) -> Tensor"


def test_tags_are_stored_as_tag_members():
    @jaxops.custom_op("t_tags::relu", mutates_args=(), tags=(jaxops.Tag.pointwise, jaxops.Tag.core))
    def relu(x: jax.Array) -> jax.Array:
        return jnp.maximum(x, 0)

    assert relu.tags == (jaxops.Tag.pointwise, jaxops.Tag.core)
    single = jaxops.custom_op("t_tags::neg", lambda x: -x, mutates_args=(), schema="(Tensor x) -> Tensor", tags=jaxops.Tag.inplace)
    assert single.tags == (jaxops.Tag.inplace,)
    assert jaxops.custom_op("t_tags::id", lambda x: x, mutates_args=(), schema="(Tensor x) -> Tensor").tags == ()
    defined = jaxops.define("t_tags::sq", "(Tensor x) -> Tensor", tags=[jaxops.Tag.out, jaxops.Tag.needs_fixed_stride_order])
    assert defined.tags == (jaxops.Tag.out, jaxops.Tag.needs_fixed_stride_order)
    assert {t.name for t in jaxops.Tag} >= {
        "inplace", "out", "pointwise", "core", "needs_fixed_stride_order", "data_dependent_output", "dynamic_output_shape"
    }


@pytest.mark.parametrize("bad", ["pointwise", ("pointwise",), (jaxops.Tag.core, 3)])
def test_tags_must_be_tag_members(bad):
    with pytest.raises(ValueError, match=r"t_tags_bad::f: tags must be"):
        jaxops.custom_op("t_tags_bad::f", lambda x: x, mutates_args=(), schema="(Tensor x) -> Tensor", tags=bad)
    with pytest.raises(ValueError, match=r"t_tags_bad::g: tags must be"):
        jaxops.define("t_tags_bad::g", "(Tensor x) -> Tensor", tags=bad)


def test_keyword_only_mutated_array_is_functionalized():
    @jaxops.custom_op("t_kwout::add_out", mutates_args={"out"})
    def add_out(x: jax.Array, y: jax.Array, *, out: jax.Array) -> None:
        out[...] = x + y

    assert add_out.schema == "(Tensor x, Tensor y, *, Tensor(a2!) out) -> ()"
    zeros = jnp.zeros(4)
    np.testing.assert_allclose(add_out(X, Y, out=zeros), X + Y)
    np.testing.assert_allclose(zeros, 0.0)  # the caller's array is unchanged
    np.testing.assert_allclose(jax.jit(lambda a: add_out(a, Y, out=zeros))(X), X + Y)
    np.testing.assert_allclose(jax.grad(lambda a: add_out(a, a, out=zeros).sum())(X), 2.0)
    ref = jax.new_ref(jnp.zeros(4))
    add_out(X, Y, out=ref)
    np.testing.assert_allclose(ref[...], X + Y)

    @jaxops.custom_op("t_kwout::hadd_out", mutates_args={"out"}, host=True)
    def hadd_out(x: jax.Array, *, out: jax.Array) -> None:
        out += x

    np.testing.assert_allclose(hadd_out(X, out=jnp.ones(4)), X + 1)
    np.testing.assert_allclose(jax.jit(lambda a: hadd_out(a, out=jnp.ones(4)))(X), X + 1)


def test_ops_pickle_by_name_and_are_not_swapped_classes():
    import pickle

    @jaxops.custom_op("t_pickle::f", mutates_args=())
    def f(x: jax.Array) -> jax.Array:
        return x + 1

    assert type(f) is jaxops.CustomOp
    assert pickle.loads(pickle.dumps(f)) is f
    jaxops.ops.t_pickle.f  # noqa: B018 - registered
    copy = pickle.dumps(f)

    @jaxops.custom_op("t_pickle::f", mutates_args=())
    def f2(x: jax.Array) -> jax.Array:
        return x + 2

    assert pickle.loads(copy) is f2  # by name: the op registered now


def test_signature_comes_from_the_schema():
    import inspect

    op = jaxops.define("t_sig::f", "(Tensor x, float alpha=1.0, *, SymInt n=2) -> Tensor")
    assert str(inspect.signature(op)) == "(x, alpha=1.0, *, n=2)"


def test_custom_op_name_with_an_overload_is_refused():
    with pytest.raises(ValueError, match=r"overload"):
        jaxops.custom_op("w2v::foo.bar", lambda x: x, mutates_args=(), schema="(Tensor x) -> Tensor")


def test_custom_op_schema_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"w2v::s3.*schema.*str.*int"):
        jaxops.custom_op("w2v::s3", lambda x: x, mutates_args=(), schema=3)
