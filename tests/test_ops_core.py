"""custom_op: declaration, naming, validation, eager/jit/grad/vmap/eval_shape (API.md §1)."""

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


def test_schema_name_and_repr(scale_add):
    assert scale_add.schema == "(Tensor x, Tensor y, float alpha=1.0) -> Tensor"
    assert scale_add.name == "t_core::scale_add"
    r = repr(scale_add)
    assert "t_core::scale_add" in r and "Tensor x" in r


def test_call_positional_keyword_default(scale_add):
    np.testing.assert_allclose(scale_add(X, Y), X + Y)
    np.testing.assert_allclose(scale_add(X, Y, 3.0), X + 3 * Y)
    np.testing.assert_allclose(scale_add(X, y=Y, alpha=2), X + 2 * Y)
    np.testing.assert_allclose(scale_add(np.asarray(X), Y), X + Y)


def test_lookup_by_name(scale_add):
    assert jaxops.ops.t_core.scale_add.default is scale_add
    np.testing.assert_allclose(jaxops.ops.t_core.scale_add(X, Y, alpha=2.0), X + 2 * Y)
    assert jaxops.ops.t_core.scale_add.schema == scale_add.schema
    with pytest.raises(AttributeError, match="t_core::nope"):
        jaxops.ops.t_core.nope  # noqa: B018


def test_transforms(scale_add):
    np.testing.assert_allclose(jax.jit(scale_add)(X, Y), X + Y)
    np.testing.assert_allclose(jax.grad(lambda a: scale_add(a, Y, 2.0).sum())(X), jnp.ones(4))
    np.testing.assert_allclose(jax.grad(lambda b: scale_add(X, b, 2.0).sum())(Y), 2 * jnp.ones(4))
    xs = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(jax.vmap(scale_add, in_axes=(0, None))(xs, Y), xs + Y)
    out = jax.eval_shape(scale_add, jax.ShapeDtypeStruct((7,), jnp.float32), jax.ShapeDtypeStruct((7,), jnp.float32))
    assert out.shape == (7,) and out.dtype == jnp.float32
    np.testing.assert_allclose(jax.hessian(lambda a: (scale_add(a, a) ** 2).sum())(X), 8 * jnp.eye(4))
    f = jax.jit(lambda a: jax.lax.scan(lambda c, _: (scale_add(c, Y), None), a, None, length=3)[0])
    np.testing.assert_allclose(f(X), X + 3)
    np.testing.assert_allclose(jax.checkpoint(lambda a: scale_add(a, Y))(X), X + 1)


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


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda op: op(X, 1.0), r"t_core::scale_add: argument 'y' must be an array"),
        (lambda op: op([1.0], Y), r"t_core::scale_add: argument 'x' must be an array"),
        (lambda op: op(X, Y, "fast"), r"t_core::scale_add: argument 'alpha' must be a float"),
        (lambda op: op(X), r"t_core::scale_add\(\) missing required argument 'y'"),
        (lambda op: op(X, Y, beta=1.0), r"t_core::scale_add\(\) got an unexpected keyword argument 'beta'"),
        (lambda op: op(X, Y, 1.0, 2.0), r"t_core::scale_add\(\) takes 3 positional argument"),
        (lambda op: op(X, Y, x=X), r"t_core::scale_add\(\) got multiple values for argument 'x'"),
    ],
)
def test_argument_validation(scale_add, call, message):
    with pytest.raises(TypeError, match=message):
        call(scale_add)


def test_argument_validation_under_jit(scale_add):
    with pytest.raises(TypeError, match="argument 'alpha' must be a float"):
        jax.jit(lambda a: scale_add(a, a, "x"))(X)


def test_int_parameter_rejects_tracer():
    @jaxops.custom_op("t_core::rep", mutates_args=())
    def rep(x: jax.Array, n: int) -> jax.Array:
        return jnp.tile(x, n)

    assert rep(X, 2).shape == (8,)
    with pytest.raises(TypeError, match="argument 'n' is an int in the schema"):
        jax.jit(lambda a, k: rep(a, k))(X, 2)


def test_all_argument_kinds():
    @jaxops.custom_op("t_core::kinds", mutates_args=())
    def kinds(
        x: jax.Array,
        xs: list[jax.Array],
        o: jax.Array | None,
        n: int,
        f: float,
        b: bool,
        s: str,
        d: jnp.dtype,
        sizes: list[int],
        num: jaxops.types.Number,
    ) -> jax.Array:
        out = x.astype(d) * n * f
        for e in xs:
            out = out + e
        if o is not None:
            out = out + o
        if b and s == "neg":
            out = -out
        return out.reshape(sizes) * num

    out = kinds(X, [Y, Y], None, 2, 0.5, True, "neg", jnp.float32, [2, 2], 3)
    np.testing.assert_allclose(out, (-(X + 2 * Y)).reshape(2, 2) * 3)
    out2 = jax.jit(kinds, static_argnums=(3, 4, 5, 6, 7, 8, 9))(X, [Y], Y, 1, 1.0, False, "", jnp.float32, (4,), 1)
    np.testing.assert_allclose(out2, X + 2 * Y)
    with pytest.raises(TypeError, match="argument 'xs' must be a list"):
        kinds(X, Y, None, 2, 0.5, True, "neg", jnp.float32, [2, 2], 3)
    with pytest.raises(TypeError, match="argument 'd' must be a dtype"):
        kinds(X, [], None, 2, 0.5, True, "neg", 3, [2, 2], 3)


def test_tuple_and_scalar_returns():
    @jaxops.custom_op("t_core::multi", mutates_args=())
    def multi(x: jax.Array) -> tuple[jax.Array, int, float]:
        return x * 2, x.shape[0], 1.5

    a, n, f = multi(X)
    np.testing.assert_allclose(a, 2 * X)
    assert n == 4 and isinstance(n, int) and f == 1.5

    @jaxops.custom_op("t_core::one", mutates_args=())
    def one(x: jax.Array) -> tuple[jax.Array]:
        return (x,)

    out = one(X)
    assert isinstance(out, tuple) and len(out) == 1

    @jaxops.custom_op("t_core::lst", mutates_args=())
    def lst(x: jax.Array) -> list[jax.Array]:
        return [x, x + 1]

    out = jax.jit(lst)(X)
    assert isinstance(out, list) and len(out) == 2


def test_wrong_return_structure_is_reported():
    @jaxops.custom_op("t_core::badret", mutates_args=())
    def badret(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x

    with pytest.raises(RuntimeError, match=r"t_core::badret: the schema returns a tuple of 2"):
        badret(X)


def test_eager_call_does_not_retrace():
    traces = []

    @jaxops.custom_op("t_core::counted", mutates_args=())
    def counted(x: jax.Array, k: float) -> jax.Array:
        traces.append(1)
        return x * k

    for _ in range(5):
        counted(X, 2.0)
    assert len(traces) == 1
    counted(jnp.ones(3), 2.0)  # new shape: one more trace
    counted(X, 3.0)  # new static value: one more trace
    for _ in range(3):
        counted(X, 2.0)
    assert len(traces) == 3


def test_op_name_appears_in_jaxpr(scale_add):
    text = str(jax.make_jaxpr(lambda a, b: scale_add(a, b) * 2)(X, Y))
    assert "t_core::scale_add" in text


def _hlo_ops(fn, *args):
    text = jax.jit(fn).lower(*args).compile().as_text()
    ops = re.findall(r"=\s*[a-z0-9\[\]{},]+\s+([a-z\-]+)\(", text)
    return sorted(o for o in ops if o not in ("parameter", "tuple", "get-tuple-element"))


def test_zero_overhead_under_jit_same_hlo():
    @jaxops.custom_op("t_core::gelu_mm", mutates_args=())
    def gelu_mm(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.nn.gelu(x @ w)

    @jaxops.custom_op("t_core::rms", mutates_args=())
    def rms(x: jax.Array, eps: float = 1e-6) -> jax.Array:
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)

    def with_ops(x, w):
        return rms(gelu_mm(x, w)).sum()

    def plain(x, w):
        h = jax.nn.gelu(x @ w)
        return (h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6)).sum()

    x = jnp.ones((8, 16))
    w = jnp.ones((16, 32)) * 0.01
    assert _hlo_ops(with_ops, x, w) == _hlo_ops(plain, x, w)
    grad_ops = _hlo_ops(jax.grad(with_ops, argnums=(0, 1)), x, w)
    assert grad_ops == _hlo_ops(jax.grad(plain, argnums=(0, 1)), x, w)
    np.testing.assert_allclose(jax.jit(with_ops)(x, w), jax.jit(plain)(x, w), rtol=1e-6)


def test_infer_schema_is_exported():
    def f(x: jax.Array, n: int = 2) -> jax.Array:
        return x

    assert jaxops.infer_schema(f, mutates_args=()) == "(Tensor x, SymInt n=2) -> Tensor"
    assert jaxops.infer_schema(f, mutates_args=(), op_name="myop") == "myop(Tensor x, SymInt n=2) -> Tensor"


def test_traceable_body_with_data_dependent_shape_runs_eagerly():
    runs = []

    @jaxops.custom_op("t_core::nonzero", mutates_args=())
    def nonzero(x: jax.Array) -> jax.Array:
        runs.append(1)
        return jnp.stack(jnp.nonzero(x), axis=1)

    @jaxops.custom_op("t_core::positive", mutates_args=())
    def positive(x: jax.Array, *, above: float = 0.0) -> jax.Array:
        return x[x > above]

    x = jnp.array([0.0, 1.0, 0.0, 2.0])
    np.testing.assert_array_equal(nonzero(x), [[1], [3]])
    assert len(runs) == 2  # one failed trace, one op-by-op run
    np.testing.assert_array_equal(nonzero(x), [[1], [3]])
    assert len(runs) == 3  # remembered: no second attempt to trace
    np.testing.assert_allclose(positive(x), [1.0, 2.0])
    np.testing.assert_allclose(positive(x, above=1.0), [2.0])
    # under jit the shape is unknown: JAX's own error reaches the user
    with pytest.raises(jax.errors.ConcretizationTypeError):
        jax.jit(nonzero)(x)
