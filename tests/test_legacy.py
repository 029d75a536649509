"""The legacy custom-op surface (``jaxops.legacy``, PyTorch's ``torch._custom_ops``) and the
schema helpers (API.md §11).

Ports of the legacy tests of PyTorch's test_custom_ops.py: "requires_grad" becomes "inside
``jax.grad`` / ``jax.vjp``", ``y.backward()`` becomes ``jax.grad``, ``FakeTensorMode``
becomes ``jax.eval_shape``.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import List, Optional, Tuple  # noqa: UP035 - tuple_to_list is about typing's forms

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops import legacy
from jaxops.inference import tuple_to_list
from jaxops.schema import is_functional_schema, is_tensorlist_like_type, parse_schema

NS = "t_legacy"
X = jnp.array([0.5, -1.0, 2.0])
_CPU = jax.devices("cpu")[0]


def cpu(x):
    """``x`` on the CPU: tests of "cpu"-only kernels also run on a GPU machine."""
    return jax.device_put(x, _CPU)


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    for name in [n for n in legacy._LEGACY if n.startswith(NS + "::")]:
        legacy._destroy(name)


@pytest.fixture
def lib():
    library = jaxops.Library(NS, "FRAGMENT")
    yield library
    library._destroy()


def grad_of(f, *args, argnums=0):
    return jax.grad(lambda *a: jnp.sum(f(*a)), argnums=argnums)(*args)


def _decl(name: str, schema: str):
    """A declaration ``def name(<the schema's parameters>): raise NotImplementedError``."""
    fs = parse_schema(f"{name}{schema}")
    pos = [a.name for a in fs.arguments if not a.kwarg_only]
    kw = [a.name for a in fs.arguments if a.kwarg_only]
    params = ", ".join(pos + (["*"] + kw if kw else []))
    scope: dict = {}
    exec(f"def {name}({params}):\n    raise NotImplementedError", scope)  # noqa: S102
    return scope[name]


def _sin_op(name: str = "foo"):
    """A legacy op ``t_legacy::<name>(Tensor x) -> Tensor`` with a sin kernel."""

    def foo(x: jax.Array) -> jax.Array:
        raise NotImplementedError

    foo.__name__ = name
    op = legacy.custom_op(f"{NS}::{name}")(foo)
    legacy.impl(f"{NS}::{name}", func=jnp.sin)
    return op


# ------------------------------------------------------------------------ definition
def test_invalid_schemas():
    with pytest.raises(AssertionError, match="Invalid function schema: foo"):
        legacy.custom_op(f"{NS}::foo", "(")
    with pytest.raises(ValueError, match="Invalid function schema: foo"):
        legacy.custom_op(f"{NS}::foo", "(Tensor x) -> Tnsor")


def test_invalid_qualname():
    with pytest.raises(ValueError, match="overload"):
        legacy.custom_op(f"{NS}::foo.Tensor", "() -> ()")
    with pytest.raises(ValueError, match="namespace"):
        legacy.custom_op("foo", "(Tensor x) -> Tensor")
    for ns in ("aten", "jax", "prim"):
        with pytest.raises(ValueError, match="is a reserved namespace"):
            legacy.custom_op(f"{ns}::foo", "(Tensor x) -> Tensor")


def test_name_must_match():
    with pytest.raises(ValueError, match="to have name"):

        @legacy.custom_op(f"{NS}::foo")
        def baz(x: jax.Array) -> jax.Array:
            raise NotImplementedError

    with pytest.raises(ValueError, match="to have name 'foo'"):
        legacy.custom_op(f"{NS}::foo", "(Tensor x) -> Tensor")(lambda x: x)


def foo(x):  # the decorated function of test_unsupported_schemas
    raise NotImplementedError


def test_unsupported_schemas():
    for schema in ("(Tensor(a!) x) -> Tensor(a)", "(Tensor(a) x) -> Tensor(a)", "(Tensor x) -> ()"):
        with pytest.raises(ValueError, match="only supports functional"):
            legacy.custom_op(f"{NS}::foo", schema)(foo)
    with pytest.raises(ValueError, match="self"):
        legacy.custom_op(f"{NS}::foo", "(Tensor self) -> ()")(foo)
    # nothing was registered by the refused definitions
    assert f"{NS}::foo" not in legacy._LEGACY
    with pytest.raises(AttributeError):
        jaxops.ops.t_legacy.foo  # noqa: B018


def test_unsupported_inferred_schema():
    with pytest.raises(ValueError, match="only supports functional"):

        @legacy.custom_op(f"{NS}::foo")
        def foo(x: jax.Array) -> None:
            raise NotImplementedError


def test_schema_matches_signature():
    with pytest.raises(ValueError, match="signature to match"):

        @legacy.custom_op(f"{NS}::blah", "(Tensor y) -> Tensor")
        def blah(x):
            pass

    with pytest.raises(ValueError, match="signature to match"):

        @legacy.custom_op(f"{NS}::blah2", "(Tensor x, *, Tensor y) -> Tensor")
        def blah2(x, y):
            pass

    with pytest.raises(ValueError, match="signature to match"):

        @legacy.custom_op(f"{NS}::blah3", "(Tensor x, *, Tensor w, Tensor z) -> Tensor")
        def blah3(x, *, y, z):
            pass

    with pytest.raises(ValueError, match="signature to match"):

        @legacy.custom_op(f"{NS}::blah4", "(Tensor x, *, Tensor z, Tensor y) -> Tensor")
        def blah4(x, *, y, z):
            pass

    with pytest.raises(ValueError, match="not supported"):

        @legacy.custom_op(f"{NS}::blah5", "(Tensor x) -> Tensor")
        def blah5(*args):
            pass

    with pytest.raises(ValueError, match="not supported"):

        @legacy.custom_op(f"{NS}::blah6", "(*, Tensor z, Tensor y) -> Tensor")
        def blah6(**kwargs):
            pass

    with pytest.raises(ValueError, match="default arguments"):

        @legacy.custom_op(f"{NS}::blah7", "(Tensor x, *, Tensor y) -> Tensor")
        def blah7(x=1, *, y):
            pass

    with pytest.raises(ValueError, match="default arguments"):

        @legacy.custom_op(f"{NS}::blah8", "(Tensor x, *, Tensor y) -> Tensor")
        def blah8(x, *, y=1):
            pass

    # keyword-only parameters work
    @legacy.custom_op(f"{NS}::blah9", "(Tensor x, *, Tensor y) -> Tensor")
    def blah9(x, *, y):
        pass

    assert blah9.schema == "(Tensor x, *, Tensor y) -> Tensor"


def test_kwarg_only_tensor_op_runs_and_differentiates():
    @legacy.custom_op(f"{NS}::mul", "(Tensor x, *, Tensor y, float alpha) -> Tensor")
    def mul(x, *, y, alpha):
        raise NotImplementedError

    seen = {}

    @legacy.impl(f"{NS}::mul")
    def _(x, *, y, alpha):  # kernels receive keyword-only parameters by keyword
        seen["kw"] = True
        return alpha * x * y

    @legacy.impl_save_for_backward(f"{NS}::mul")
    def _(inputs, output):
        return inputs.x, inputs.y, inputs.alpha

    @legacy.impl_backward(f"{NS}::mul")
    def _(ctx, saved, g):
        x, y, alpha = saved
        return {"x": alpha * g * y, "y": alpha * g * x}

    y = jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(mul(X, y=y, alpha=2.0), 2 * X * y)
    assert seen["kw"]
    np.testing.assert_allclose(grad_of(lambda b: mul(X, y=b, alpha=2.0), y), 2 * X)
    np.testing.assert_allclose(jax.jit(lambda a: mul(a, y=y, alpha=3.0))(X), 3 * X * y)


def test_lifetime():
    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array) -> jax.Array:
        raise NotImplementedError

    assert legacy.get_op(f"{NS}::foo") is foo
    with pytest.raises(RuntimeError, match="multiple times"):

        @legacy.custom_op(f"{NS}::foo")
        def foo(x: jax.Array) -> jax.Array:  # noqa: F811
            raise NotImplementedError

    foo._destroy()
    with pytest.raises(AttributeError):
        jaxops.ops.t_legacy.foo  # noqa: B018

    # smoke test: after destroying, the name can be defined again
    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array) -> jax.Array:  # noqa: F811
        raise NotImplementedError

    legacy._destroy(f"{NS}::foo")
    assert f"{NS}::foo" not in legacy._LEGACY


def test_define_over_an_existing_jaxops_op_raises(lib):
    lib.define("foo(Tensor x) -> Tensor")
    with pytest.raises(RuntimeError, match="multiple times"):

        @legacy.custom_op(f"{NS}::foo")
        def foo(x: jax.Array) -> jax.Array:
            raise NotImplementedError


def test_op_is_an_ordinary_jaxops_op():
    op = _sin_op()
    assert op.name == f"{NS}::foo" and op.schema == "(Tensor x) -> Tensor"
    assert "t_legacy::foo" in repr(op)
    assert isinstance(op.default, jaxops.CustomOp)
    np.testing.assert_allclose(jaxops.ops.t_legacy.foo(X), jnp.sin(X))
    assert jaxops.ops.t_legacy.foo.default is op.default


def test_no_kernel_yet():
    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array) -> jax.Array:
        raise NotImplementedError

    with pytest.raises(RuntimeError, match=r"t_legacy::foo: no kernel"):
        foo(X)


# ---------------------------------------------------------------------------- kernels
def test_impl_cpu():
    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array) -> jax.Array:
        raise NotImplementedError

    @legacy.impl(f"{NS}::foo", device_types="cpu")
    def foo_cpu(x):
        return jnp.sin(x)

    np.testing.assert_allclose(foo(cpu(X)), foo_cpu(X))


def test_op_impl_method_and_host_kernel():
    @legacy.custom_op(f"{NS}::foo", "(Tensor x, int dim) -> Tensor")
    def foo(x, dim):
        raise NotImplementedError

    @foo.impl("cpu", host=True)
    def _(x, dim):
        return np.sum(x, axis=dim)  # NumPy: a host kernel

    np.testing.assert_allclose(foo(cpu(jnp.ones((2, 3))), 1), [3.0, 3.0])


def test_impl_invalid_devices():
    def foo_impl(x):
        return jnp.sin(x)

    for device_type in legacy.SUPPORTED_DEVICE_TYPES:
        # smoke test: every supported device type registers (one op each: "gpu" covers "cuda")
        name = f"dev_{device_type}"
        f = legacy.custom_op(f"{NS}::{name}", "(Tensor x) -> Tensor")(_decl(name, "(Tensor x) -> Tensor"))
        legacy.impl(f"{NS}::{name}", device_types=device_type)(foo_impl)
        f._destroy()

    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array) -> jax.Array:
        raise NotImplementedError

    for invalid_type in ["hip", "xla", "mkldnn", ["cpu", "hip"]]:
        with pytest.raises(ValueError, match="we only support device_type"):
            legacy.impl(f"{NS}::foo", device_types=invalid_type)(foo_impl)
    # the refused list registered nothing, not even its valid "cpu"
    legacy.impl(f"{NS}::foo", device_types="cpu")(foo_impl)


def test_duplicate_impl_same_device():
    op = _sin_op()
    with pytest.raises(RuntimeError, match="already has an implementation for device type 'cpu'"):
        legacy.impl(f"{NS}::foo", device_types="cpu", func=jnp.cos)
    with pytest.raises(RuntimeError, match=r"registered at .*test_legacy\.py:\d+"):
        op.impl("cuda")(jnp.cos)
    np.testing.assert_allclose(op(X), jnp.sin(X))


def test_impl_on_existing_op(lib):
    lib.define("foo(Tensor x) -> Tensor")
    qualname = f"{NS}::foo"

    @legacy.impl(qualname)
    def foo_impl(x):
        return jnp.sin(x)

    np.testing.assert_allclose(jaxops.ops.t_legacy.foo(X), jnp.sin(X))
    # the op was not defined through the legacy API: no autograd was forced on it
    np.testing.assert_allclose(grad_of(jaxops.ops.t_legacy.foo, X), jnp.cos(X), rtol=1e-6)


@pytest.mark.parametrize("key", ["CPU", "CUDA", "cpu", "CompositeImplicitAutograd", "CompositeExplicitAutograd"])
def test_impl_on_existing_op_with_cpu_registration(lib, key):
    lib.define("foo(Tensor x) -> Tensor")
    lib.impl("foo", jnp.sin, key)
    with pytest.raises(RuntimeError, match="already has an implementation"):
        legacy.impl(f"{NS}::foo", func=jnp.sin)


def test_handle_is_renewed_when_the_op_is_redefined():
    first = jaxops.Library(NS, "FRAGMENT")
    first.define("foo(Tensor x) -> Tensor")
    legacy.impl(f"{NS}::foo", func=jnp.sin)
    first._destroy()
    second = jaxops.Library(NS, "FRAGMENT")
    try:
        second.define("foo(Tensor x, Tensor y) -> Tensor")
        legacy.impl(f"{NS}::foo", func=lambda x, y: x * y)  # not "already has an implementation"
        np.testing.assert_allclose(jaxops.ops.t_legacy.foo(X, X), X * X)
    finally:
        second._destroy()


# ------------------------------------------------------------------------------ fakes
def test_impl_abstract_host_op_under_transforms():
    @legacy.custom_op(f"{NS}::foo", "(Tensor x, int dim) -> Tensor")
    def foo(x, dim):
        raise NotImplementedError

    jaxops.impl(f"{NS}::foo", "cpu", lambda x, dim: np.sum(x, axis=dim), host=True)

    @legacy.impl_abstract(f"{NS}::foo")
    def foo_meta(x, dim):
        shape = list(x.shape)
        del shape[dim]
        return jax.ShapeDtypeStruct(tuple(shape), x.dtype)

    x = cpu(jnp.ones((2, 3)))
    out = jax.eval_shape(lambda a: foo(a, 1), jax.ShapeDtypeStruct((2, 3), jnp.float32))
    assert out.shape == foo_meta(x, 1).shape == (2,)
    np.testing.assert_allclose(jax.jit(foo, static_argnums=1)(x, 1), [3.0, 3.0])
    np.testing.assert_allclose(jax.vmap(lambda a: foo(a, 0))(cpu(jnp.ones((4, 2, 3)))), 2 * jnp.ones((4, 3)))


def test_duplicate_impl_abstract_names_the_first():
    @legacy.custom_op(f"{NS}::foo", "(Tensor x, int dim) -> Tensor")
    def foo(x, dim):
        raise NotImplementedError

    @legacy.impl_abstract(f"{NS}::foo")
    def foo_meta(x, dim):
        return jax.ShapeDtypeStruct(x.shape[:dim] + x.shape[dim + 1 :], x.dtype)

    with pytest.raises(RuntimeError, match=r"test_legacy\.py:\d+"):

        @legacy.impl_abstract(f"{NS}::foo")
        def foo_meta2(x, dim):
            return foo_meta(x, dim)


def test_impl_abstract_overload(lib):
    lib.define("sin.blah(Tensor x) -> Tensor")
    lib.impl("sin.blah", lambda x: np.sin(x), "default", host=True)
    legacy.impl_abstract(f"{NS}::sin.blah", func=lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    op = jaxops.ops.t_legacy.sin.blah
    out = jax.eval_shape(op, jax.ShapeDtypeStruct((3,), jnp.float32))
    assert out.shape == (3,)
    np.testing.assert_allclose(jax.jit(op)(X), np.sin(X), rtol=1e-6)
    handle = legacy.get_op(f"{NS}::sin.blah")
    assert handle.name == f"{NS}::sin.blah" and handle.default is op
    np.testing.assert_allclose(handle(X), np.sin(X), rtol=1e-6)


def test_abstract_impl_on_existing_op(lib):
    lib.define("foo(Tensor x) -> Tensor")
    lib.impl("foo", lambda x: np.sin(x), "cpu", host=True)
    legacy.impl_abstract(f"{NS}::foo", func=lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    out = jax.eval_shape(jaxops.ops.t_legacy.foo, jax.ShapeDtypeStruct((3,), jnp.float32))
    assert out.shape == (3,) and out.dtype == jnp.float32
    np.testing.assert_allclose(jax.jit(jaxops.ops.t_legacy.foo)(cpu(X)), np.sin(X), rtol=1e-6)


def test_abstract_impl_on_existing_op_with_meta(lib):
    lib.define("foo(Tensor x) -> Tensor")
    lib.impl("foo", jnp.sin, "Meta")
    with pytest.raises(RuntimeError, match=r"already has .*Meta implementation") as info:
        legacy.impl_abstract(f"{NS}::foo", func=jnp.sin)
    assert "test_legacy.py:" in str(info.value)


def test_abstract_impl_on_existing_op_with_CompositeImplicitAutograd(lib):
    lib.define("foo(Tensor x) -> Tensor")
    lib.impl("foo", jnp.sin, "CompositeImplicitAutograd")
    with pytest.raises(RuntimeError, match="CompositeImplicitAutograd"):
        legacy.impl_abstract(f"{NS}::foo", func=jnp.sin)


def test_abstract_impl_on_existing_op_with_CompositeExplicitAutograd(lib):
    lib.define("foo(Tensor x) -> Tensor")
    lib.impl("foo", jnp.sin, "CompositeExplicitAutograd")
    legacy.impl_abstract(f"{NS}::foo", func=lambda x: jax.ShapeDtypeStruct((), x.dtype))
    # The fake is wired in: opcheck compares it with the kernel and names it (a scalar
    # fake for an elementwise kernel is wrong on purpose).
    res = jaxops.opcheck(jaxops.ops.t_legacy.foo, (X,), test_utils="test_faketensor", raise_exception=False)
    err = res["test_faketensor"]
    assert isinstance(err, jaxops.OpCheckError)
    assert "register_fake at" in err.registration and "test_legacy.py:" in err.registration


# ---------------------------------------------------------------------------- autograd
def test_autograd_notimplemented():
    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array) -> jax.Array:
        raise NotImplementedError

    legacy.impl(f"{NS}::foo", func=jnp.sin)
    with pytest.raises(RuntimeError, match="Autograd has not been implemented"):
        grad_of(foo, X)
    with pytest.raises(RuntimeError, match="Autograd has not been implemented"):
        jax.vjp(foo, X)
    with pytest.raises(RuntimeError, match="Autograd has not been implemented"):
        jax.jvp(foo, (X,), (X,))
    foo._destroy()

    @legacy.custom_op(f"{NS}::foo")
    def foo(x: Sequence[jax.Array]) -> jax.Array:  # noqa: F811
        raise NotImplementedError

    legacy.impl(f"{NS}::foo", func=lambda xs: xs[0] * xs[1])
    y = jnp.ones(3)
    with pytest.raises(RuntimeError, match="Autograd has not been implemented"):
        grad_of(lambda a: foo([y, a]), X)
    foo._destroy()

    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array, y: jax.Array) -> jax.Array:  # noqa: F811
        raise NotImplementedError

    legacy.impl(f"{NS}::foo", func=lambda x, y: x * y)
    with pytest.raises(RuntimeError, match=r"Autograd has not been implemented for operator t_legacy::foo"):
        grad_of(lambda a: foo(y, a), X)


def test_autograd_notimplemented_gradmode():
    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array, y: jax.Array) -> jax.Array:
        raise NotImplementedError

    @legacy.impl(f"{NS}::foo")
    def foo_impl(x, y):
        return x * y

    y = jnp.ones(3)
    # not differentiated: a plain call, jit, vmap, eval_shape, and a grad that does not flow
    # through the op all work
    np.testing.assert_allclose(foo(y, X), X)
    np.testing.assert_allclose(jax.jit(foo)(y, X), X)
    np.testing.assert_allclose(jax.vmap(foo)(jnp.ones((2, 3)), jnp.ones((2, 3))), jnp.ones((2, 3)))
    assert jax.eval_shape(foo, y, X).shape == (3,)
    g = jax.grad(lambda a: jnp.sum(a) + jnp.sum(foo(y, jax.lax.stop_gradient(a))))(X)
    np.testing.assert_allclose(g, jnp.ones(3))


def test_backward_partially_registered():
    _sin_op()

    @legacy.impl_backward(f"{NS}::foo")
    def foo_backward(ctx, saved, grad):
        return grad * jnp.cos(saved)

    op = legacy.get_op(f"{NS}::foo")
    np.testing.assert_allclose(op(X), jnp.sin(X))  # a plain call is fine
    with pytest.raises(RuntimeError, match="unable to find a 'save_for_backward'"):
        grad_of(op, X)


def test_save_for_backward_inputs_are_namedtuple():
    op = _sin_op()
    hit = 0

    @legacy.impl_save_for_backward(f"{NS}::foo")
    def foo_save_for_backward(inputs, output):
        nonlocal hit
        hit += 1
        assert isinstance(inputs, tuple)
        assert list(inputs._asdict().keys()) == ["x"]
        return inputs.x

    @legacy.impl_backward(f"{NS}::foo")
    def foo_backward(ctx, saved, grad):
        return {"x": grad * jnp.cos(saved)}

    x = jnp.array(0.3)
    y, vjp_fn = jax.vjp(op, x)
    assert hit == 1
    (gx,) = vjp_fn(jnp.ones_like(y))
    assert hit == 1
    np.testing.assert_allclose(gx, jnp.cos(x), rtol=1e-6)


def _with_backward(schema: str, kernel, save, backward, **kw):
    op = legacy.custom_op(f"{NS}::foo", schema)(_decl("foo", schema))
    legacy.impl(f"{NS}::foo", func=kernel)
    legacy.impl_save_for_backward(f"{NS}::foo")(save)
    legacy.impl_backward(f"{NS}::foo", **kw)(backward)
    return op


def test_backward_returns_dict():
    op = _with_backward(
        "(Tensor x) -> Tensor", jnp.sin, lambda inputs, out: inputs.x, lambda ctx, s, g: g * jnp.cos(s)
    )
    with pytest.raises(RuntimeError, match="to be a dict") as info:
        grad_of(op, X)
    assert "t_legacy::foo" in str(info.value) and "test_legacy.py:" in str(info.value)


def test_backward_dict_invalid_keys():
    op = _with_backward(
        "(Tensor x) -> Tensor", jnp.sin, lambda inputs, out: inputs.x,
        lambda ctx, s, g: {"x": g * jnp.cos(s), "y": None},
    )
    with pytest.raises(RuntimeError, match="to have keys {'x'}"):
        grad_of(op, X)


def test_backward_dict_grad_for_nontensor():
    op = legacy.custom_op(f"{NS}::foo", "(Tensor x, int dim) -> Tensor")(
        _decl("foo", "(Tensor x, int dim) -> Tensor")
    )
    legacy.impl(f"{NS}::foo", func=lambda x, dim: jnp.sin(x))
    legacy.impl_save_for_backward(f"{NS}::foo")(lambda inputs, out: inputs.x)
    legacy.impl_backward(f"{NS}::foo")(lambda ctx, s, g: {"x": g * jnp.cos(s), "dim": None})
    with pytest.raises(RuntimeError, match="non-Tensor-like types"):
        grad_of(lambda a: op(a, 32), X)


def test_backward_dict_requires_keys_for_input_tensors():
    op = _with_backward(
        "(Tensor x, Tensor y) -> Tensor", lambda x, y: jnp.sin(x), lambda inputs, out: inputs.x,
        lambda ctx, s, g: {"x": g * jnp.cos(s)},
    )
    with pytest.raises(RuntimeError, match=r"to have keys {.*'y'.*}"):
        grad_of(lambda a: op(a, a), X)


def test_backward_dict_requires_keys_for_input_optional_tensors():
    op = _with_backward(
        "(Tensor x, Tensor? y) -> Tensor", lambda x, y: jnp.sin(x), lambda inputs, out: inputs.x,
        lambda ctx, s, g: {"x": g * jnp.cos(s)},
    )
    with pytest.raises(RuntimeError, match=r"to have keys {.*'y'.*}"):
        grad_of(lambda a: op(a, None), X)


def test_backward_optional_tensor_none_gets_no_gradient():
    op = _with_backward(
        "(Tensor x, Tensor? y) -> Tensor", lambda x, y: jnp.sin(x), lambda inputs, out: inputs.x,
        lambda ctx, s, g: {"x": g * jnp.cos(s), "y": g},
    )
    with pytest.raises(RuntimeError, match="expected None as the gradient"):
        grad_of(lambda a: op(a, None), X)


def test_backward_grads_are_tensor_or_none():
    op = _with_backward(
        "(Tensor x) -> Tensor", jnp.sin, lambda inputs, out: inputs.x,
        lambda ctx, s, g: {"x": (g * jnp.cos(s),)},
    )
    with pytest.raises(RuntimeError, match="either None or a Tensor"):
        grad_of(op, X)


def _list_op(backward):
    return _with_backward(
        "(Tensor[] xs) -> Tensor", lambda xs: jnp.sin(xs[0]), lambda inputs, out: inputs.xs[0], backward
    )


XS = [jnp.array(0.1), jnp.array(0.2), jnp.array(0.3)]


def test_backward_tensorlist_input_requires_list_grads_with_same_numel():
    op = _list_op(lambda ctx, s, g: {"xs": [g * jnp.cos(s), None]})
    with pytest.raises(RuntimeError, match="3 gradients but got 2"):
        grad_of(op, XS)


def test_backward_tensorlist_input_requires_list_grads_none_or_Tensor():
    op = _list_op(lambda ctx, s, g: {"xs": [g * jnp.cos(s), None, (None,)]})
    with pytest.raises(RuntimeError, match="None or Tensor"):
        grad_of(op, XS)


def test_backward_tensorlist_input_requires_list_grads():
    op = _list_op(lambda ctx, s, g: {"xs": None})
    with pytest.raises(RuntimeError, match="list of gradients"):
        grad_of(op, XS)


def test_backward_tensorlist_input_list_grads():
    op = _list_op(lambda ctx, s, g: {"xs": [g * jnp.cos(s), None, None]})
    grads = grad_of(op, XS)
    np.testing.assert_allclose(grads[0], jnp.cos(XS[0]), rtol=1e-6)
    assert float(grads[1]) == 0.0 and float(grads[2]) == 0.0


def test_backward_output_differentiability_type():
    @legacy.custom_op(f"{NS}::foo")
    def foo(xs: Sequence[jax.Array]) -> jax.Array:
        raise NotImplementedError

    with pytest.raises(RuntimeError, match="output_differentiability"):

        @legacy.impl_backward(f"{NS}::foo", output_differentiability=True)
        def foo_backward(ctx, saved, grad):
            return {"xs": None}


def test_backward_output_differentiability_numel():
    @legacy.custom_op(f"{NS}::foo")
    def foo(xs: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    with pytest.raises(RuntimeError, match="output_differentiability"):

        @legacy.impl_backward(f"{NS}::foo", output_differentiability=[True])
        def foo_backward(ctx, saved, grad):
            return {"xs": None}


def test_backward_output_differentiability_tensorlist():
    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        raise NotImplementedError

    @legacy.impl(f"{NS}::foo")
    def foo_impl(x):
        return [2 * x, 3 * x], 4 * x

    @legacy.impl_save_for_backward(f"{NS}::foo")
    def foo_save_for_backward(inputs, output):
        return []

    seen = {}

    @legacy.impl_backward(f"{NS}::foo", output_differentiability=[False, True])
    def foo_backward(ctx, saved, grad_lst, grad):
        seen["lst"] = len(grad_lst)  # the list output's gradients arrive as a list (zeros)
        return {"x": 4 * grad}

    (a, b), c = foo(X)
    np.testing.assert_allclose(c, 4 * X)
    # the list output is not differentiable: no gradient flows through it
    g = jax.grad(lambda x: jnp.sum(foo(x)[0][0]) + jnp.sum(foo(x)[0][1]))(X)
    np.testing.assert_allclose(g, jnp.zeros(3))
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(foo(x)[1]))(X), 4 * jnp.ones(3))
    assert seen["lst"] == 2


def test_backward_output_differentiability_non_tensor():
    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array) -> tuple[jax.Array, int]:
        raise NotImplementedError

    @legacy.impl(f"{NS}::foo")
    def foo_impl(x):
        return 2 * x, 3

    @legacy.impl_save_for_backward(f"{NS}::foo")
    def foo_save_for_backward(inputs, output):
        return []

    @legacy.impl_backward(f"{NS}::foo", output_differentiability=[True, True])
    def foo_backward(ctx, saved, grad0, grad1):
        return {"x": grad0}

    with pytest.raises(RuntimeError, match="is not a Tensor"):
        foo(X)
    with pytest.raises(RuntimeError, match="is not a Tensor"):
        jax.grad(lambda x: jnp.sum(jaxops.ops.t_legacy.foo(x)[0]))(X)


def test_backward_output_differentiability_int_output_ok():
    @legacy.custom_op(f"{NS}::foo")
    def foo(x: jax.Array) -> tuple[jax.Array, int]:
        raise NotImplementedError

    legacy.impl(f"{NS}::foo", func=lambda x: (2 * x, 3))
    legacy.impl_save_for_backward(f"{NS}::foo")(lambda inputs, output: None)
    legacy.impl_backward(f"{NS}::foo", output_differentiability=[True, False])(
        lambda ctx, saved, g0, g1: {"x": 2 * g0}
    )
    out, n = foo(X)
    assert n == 3
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(foo(x)[0]))(X), 2 * jnp.ones(3))


# -------------------------------------------------- preconditions on Library-defined ops
def _assert_backward_impl_raises(qualname: str, err_regex: str) -> None:
    with pytest.raises(RuntimeError, match=err_regex):

        @legacy.impl_save_for_backward(qualname)
        def foo2(x):
            return

    with pytest.raises(RuntimeError, match=err_regex):

        @legacy.impl_backward(qualname)
        def foo3(x):
            return


def test_backward_impl_on_existing_op_incorrect_schema_views(lib):
    lib.define("foo(Tensor(a) x) -> Tensor(a)")
    _assert_backward_impl_raises(f"{NS}::foo", "operator that returns views")


def test_backward_impl_on_existing_op_incorrect_schema_mutable(lib):
    lib.define("foo(Tensor(a!) x) -> Tensor")
    _assert_backward_impl_raises(f"{NS}::foo", "non-functional")


def test_backward_impl_on_existing_op_incorrect_schema_no_output(lib):
    lib.define("foo(Tensor x) -> ()")
    _assert_backward_impl_raises(f"{NS}::foo", "no returns")


def test_backward_impl_on_existing_op_CompositeImplicitAutograd(lib):
    lib.define("foo(Tensor x) -> Tensor")
    lib.impl("foo", lambda x: jnp.cos(jnp.sin(x)), "CompositeImplicitAutograd")
    _assert_backward_impl_raises(f"{NS}::foo", "CompositeImplicitAutograd")


def test_backward_impl_on_existing_op(lib):
    lib.define("foo(Tensor x) -> Tensor")
    qualname = f"{NS}::foo"

    @legacy.impl(qualname)
    def foo_impl(x):
        return jnp.sin(jax.lax.stop_gradient(x))  # JAX alone would give no gradient

    @legacy.impl_save_for_backward(qualname)
    def foo_save_for_backward(inputs, output):
        return inputs.x

    @legacy.impl_backward(qualname)
    def foo_backward(ctx, saved, grad_out):
        return {"x": grad_out * jnp.cos(saved)}

    x = jnp.array(0.7)
    gx = jax.grad(jaxops.ops.t_legacy.foo)(x)
    np.testing.assert_allclose(gx, jnp.cos(x), rtol=1e-6)


# ---------------------------------------------------- legacy ops under JAX and jaxops tools
@pytest.fixture
def sin_with_backward():
    op = _sin_op()
    legacy.impl_save_for_backward(f"{NS}::foo")(lambda inputs, output: inputs.x)
    legacy.impl_backward(f"{NS}::foo")(lambda ctx, saved, g: {"x": g * jnp.cos(saved)})
    return op


def test_transforms(sin_with_backward):
    op = sin_with_backward
    np.testing.assert_allclose(jax.jit(op)(X), jnp.sin(X))
    np.testing.assert_allclose(grad_of(op, X), jnp.cos(X), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda x: grad_of(op, x))(X), jnp.cos(X), rtol=1e-6)
    xs = jnp.stack([X, 2 * X])
    np.testing.assert_allclose(jax.vmap(op)(xs), jnp.sin(xs))
    np.testing.assert_allclose(jax.vmap(lambda x: grad_of(op, x))(xs), jnp.cos(xs), rtol=1e-6)
    out = jax.eval_shape(op, jax.ShapeDtypeStruct((5, 2), jnp.float32))
    assert out.shape == (5, 2) and out.dtype == jnp.float32
    _, t = jax.jvp(op, (X,), (jnp.ones(3),))  # forward mode from the backward
    np.testing.assert_allclose(t, jnp.cos(X), rtol=1e-6)


def test_opcheck_and_plan(sin_with_backward):
    op = sin_with_backward
    assert set(jaxops.opcheck(op, (X,)).values()) == {"SUCCESS"}
    plan = jaxops.plan(lambda x: op(op(x)), jax.ShapeDtypeStruct((4,), jnp.float32))
    assert [r["op"] for r in plan.records] == [f"{NS}::foo", f"{NS}::foo"]
    assert plan.records[0]["outputs"][0].shape == (4,)


def test_opcheck_reports_missing_backward():
    op = _sin_op()
    res = jaxops.opcheck(op, (X,), raise_exception=False)
    err = res["test_autograd_registration"]
    assert isinstance(err, jaxops.OpCheckError) and "Autograd has not been implemented" in str(err)
    assert res["test_faketensor"] == "SUCCESS" and res["test_vmap"] == "SUCCESS"


def test_opcheck_catches_a_wrong_legacy_backward():
    op = _with_backward(
        "(Tensor x) -> Tensor", jnp.sin, lambda inputs, out: inputs.x, lambda ctx, s, g: {"x": g * jnp.sin(s)}
    )
    with pytest.raises(jaxops.OpCheckError, match="test_gradcheck") as info:
        jaxops.opcheck(op, (X,), test_utils="test_gradcheck")
    assert "test_legacy.py:" in info.value.registration


# ----------------------------------------------------------------------- schema helpers
def test_is_functional_schema():
    tests = {
        "foo(Tensor x) -> Tensor": True,
        "foo(Tensor(a) x) -> Tensor": True,
        "foo(Tensor(a!) x) -> Tensor": False,
        "foo(Tensor(a) x) -> Tensor(a)": False,
        "foo(Tensor x) -> ()": False,
    }
    for schema_str, expected in tests.items():
        assert is_functional_schema(schema_str) is expected, schema_str
        assert is_functional_schema(parse_schema(schema_str)) is expected, schema_str
    with pytest.raises(TypeError, match="FunctionSchema"):
        is_functional_schema(3)


def test_is_tensorlist_like_type():
    tensorlists = [
        parse_schema("where(Tensor c) -> Tensor[]").returns[0].type,
        parse_schema("index(Tensor self, Tensor?[] indices) -> Tensor").arguments[1].type,
        parse_schema("foo(Tensor[]? x) -> ()").arguments[0].type,
        parse_schema("foo(Tensor?[]? x) -> ()").arguments[0].type,
        "Tensor(a!)[]",
    ]
    non_tensorlists = [
        parse_schema("sin(Tensor self) -> Tensor").arguments[0].type,
        parse_schema("sum(Tensor self, int[1]? dim) -> Tensor").arguments[1].type,
        "Tensor?",
        "SymInt[]",
    ]
    for a in tensorlists:
        assert is_tensorlist_like_type(a), a
    for a in non_tensorlists:
        assert not is_tensorlist_like_type(a), a


SUPPORTED_BASE_TYPES = [int, float, bool, str, jax.Device, jax.Array, np.dtype, jaxops.types.Number]


def test_tuple_to_list_simple_tuple():
    assert tuple_to_list(Tuple) == List  # noqa: UP006
    assert tuple_to_list(tuple) == List  # noqa: UP006


@pytest.mark.parametrize("t", SUPPORTED_BASE_TYPES)
def test_tuple_to_list_supported_types(t):
    assert tuple_to_list(Tuple[t, t, t]) == List[t]  # noqa: UP006
    assert tuple_to_list(Tuple[t]) == List[t]  # noqa: UP006


@pytest.mark.parametrize("t", SUPPORTED_BASE_TYPES)
def test_tuple_to_list_optional(t):
    assert tuple_to_list(Tuple[t, Optional[t]]) == List[Optional[t]]  # noqa: UP006, UP045
    assert tuple_to_list(Tuple[t, t, Optional[t]]) == List[Optional[t]]  # noqa: UP006, UP045
    assert tuple_to_list(Tuple[t, ...]) == List[t]  # noqa: UP006


def test_tuple_to_list_mixed_types():
    assert tuple_to_list(Tuple[int, float]) == List[typing.Union[int, float]]  # noqa: UP006, UP007
    assert tuple_to_list(Tuple[int, float, str]) == List[typing.Union[int, float, str]]  # noqa: UP006, UP007
    assert tuple_to_list(tuple[int, float]) == List[typing.Union[int, float]]  # noqa: UP006, UP007


# ---------------------------------------------------------------------------- exports
def test_public_names():
    assert jaxops.legacy is legacy
    assert {"legacy", "generate_repro", "is_inside_opcheck"} <= set(jaxops.__all__)
    for name in ("custom_op", "impl", "impl_abstract", "impl_save_for_backward", "impl_backward"):
        assert callable(getattr(legacy, name)) and getattr(legacy, name).__doc__


def test_get_op_unknown_name():
    with pytest.raises(ValueError, match=r"could not find the operator t_legacy::nope"):
        legacy.impl(f"{NS}::nope", func=jnp.sin)


def test_backward_on_a_jaxops_custom_op():
    @jaxops.custom_op(f"{NS}::cube", mutates_args=())
    def cube(x: jax.Array) -> jax.Array:
        return x**3

    try:
        legacy.impl_save_for_backward(f"{NS}::cube")(lambda inputs, output: inputs.x)
        legacy.impl_backward(f"{NS}::cube")(lambda ctx, x, g: {"x": 100 * g})  # deliberately not 3x^2
        np.testing.assert_allclose(grad_of(cube, X), 100 * jnp.ones(3))
    finally:
        legacy._destroy(f"{NS}::cube")
        jaxops.registry.unregister(f"{NS}::cube")
