# ruff: noqa: UP006, UP007, UP035, UP037, UP045, F722, F821 - typing.Optional/List and jaxtyping shape strings are tested on purpose
"""Black-box conformance audit of API.md sections 0, 1, 2, 3, 8 and 10.

Every test reads one or more sentences of /work/shared/API.md as an outside
tester would: only public names, quoted message substrings matched literally
(``re.escape``), and the transforms of §0 "in any nesting".
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import typing
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import has_gpu, on_cpu
from jax import export, lax

import jaxops
from jaxops.types import Number


def lit(s: str) -> str:
    return re.escape(s)


# --------------------------------------------------------------------------- fixtures
# Three kinds of op from §0: traceable, host with a fake, host with register_autograd.


@pytest.fixture(scope="module")
def trace_op():
    @jaxops.custom_op("t_ac::tsin", mutates_args=())
    def tsin(x: jax.Array, k: float = 2.0) -> jax.Array:
        return jnp.sin(x) * k

    return tsin


@pytest.fixture(scope="module")
def host_fake_op():
    @jaxops.custom_op("t_ac::hcube", mutates_args=(), host=True)
    def hcube(x: jax.Array) -> jax.Array:
        assert isinstance(x, np.ndarray)
        return x**3

    hcube.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    return hcube


@pytest.fixture(scope="module")
def host_ag_op():
    @jaxops.custom_op("t_ac::hsin", mutates_args=(), host=True)
    def hsin(x: jax.Array) -> jax.Array:
        assert isinstance(x, np.ndarray)
        return np.sin(x)

    hsin.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))

    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * jnp.cos(x)

    hsin.register_autograd(backward, setup_context=setup_context)
    return hsin


X = jnp.linspace(0.1, 1.2, 4, dtype=jnp.float32)
F32 = np.dtype("float32")
TOL = dict(rtol=1e-5, atol=1e-6)
XC = on_cpu(X)  # committed to the CPU: tests of CPU kernels pin their arrays there


# --------------------------------------------------------------------------- §0 nesting


def _ref_traceable(x):
    return jnp.sin(x) * 2.0


def test_custom_vjp_never_imports_jaxops():
    code = "import sys, custom_vjp; assert 'jaxops' not in sys.modules, 'jaxops imported'; print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.parametrize(
    "transform",
    [
        "eager",
        "jit",
        "grad",
        "vjp",
        "jvp",
        "jacfwd",
        "jacrev",
        "hessian",
        "vmap",
        "checkpoint",
        "scan",
        "eval_shape",
        "export",
        "jit_grad_vmap",
        "vmap_grad",
        "scan_grad_checkpoint",
        "jit_hessian",
        "vmap_jacfwd",
        "export_grad",
    ],
)
def test_traceable_op_in_every_transform(trace_op, transform):
    _check_transform(trace_op, _ref_traceable, transform)


@pytest.mark.parametrize(
    "transform",
    [
        "eager",
        "jit",
        "grad",
        "vjp",
        "jvp",
        "jacfwd",
        "jacrev",
        "hessian",
        "vmap",
        "checkpoint",
        "scan",
        "eval_shape",
        "jit_grad_vmap",
        "vmap_grad",
        "scan_grad_checkpoint",
        "jit_hessian",
        "vmap_jacfwd",
    ],
)
def test_host_op_with_autograd_in_every_transform(host_ag_op, transform):
    _check_transform(host_ag_op, jnp.sin, transform)


@pytest.mark.parametrize(
    "transform", ["eager", "jit", "vmap", "checkpoint", "scan", "eval_shape", "jit_vmap", "vmap_vmap"]
)
def test_host_op_with_fake_forward_transforms(host_fake_op, transform):
    _check_transform(host_fake_op, lambda x: x**3, transform)


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jacfwd", "jit_vmap_grad"])
def test_host_op_with_fake_differentiated_gives_zero_with_warning(transform):
    # §4: no autograd on a host body -> fallback "warn" (the default): warning + zero gradient.
    @jaxops.custom_op(f"t_ac::hfb_{transform}", mutates_args=(), host=True)
    def hfb(x: jax.Array) -> jax.Array:
        return x**3

    hfb.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    t = {
        "grad": jax.grad,
        "jacrev": jax.jacrev,
        "jacfwd": jax.jacfwd,
        "jit_vmap_grad": lambda f: jax.jit(jax.vmap(jax.grad(f))),
    }[transform]
    with pytest.warns(UserWarning, match=lit("an autograd kernel was not registered")) as rec:
        g = t(lambda x: hfb(x).sum())(X[:, None] if transform == "jit_vmap_grad" else X)
    assert any(f"t_ac::hfb_{transform}" in str(w.message) for w in rec)
    np.testing.assert_array_equal(np.asarray(g).reshape(-1), np.zeros(4))


def _check_transform(op, ref, transform):
    f = lambda x: op(x)  # noqa: E731
    s = lambda fn: (lambda x: fn(x).sum())  # noqa: E731
    xs = jnp.stack([X, X * 0.5, X + 0.1])
    if transform == "eager":
        np.testing.assert_allclose(op(X), ref(X), **TOL)
    elif transform == "jit":
        np.testing.assert_allclose(jax.jit(op)(X), ref(X), **TOL)
    elif transform == "grad":
        np.testing.assert_allclose(jax.grad(s(f))(X), jax.grad(s(ref))(X), **TOL)
    elif transform == "vjp":
        y, pull = jax.vjp(f, X)
        y2, pull2 = jax.vjp(ref, X)
        np.testing.assert_allclose(y, y2, **TOL)
        np.testing.assert_allclose(pull(X)[0], pull2(X)[0], **TOL)
    elif transform == "jvp":
        y, t = jax.jvp(f, (X,), (X + 1,))
        y2, t2 = jax.jvp(ref, (X,), (X + 1,))
        np.testing.assert_allclose(y, y2, **TOL)
        np.testing.assert_allclose(t, t2, **TOL)
    elif transform == "jacfwd":
        np.testing.assert_allclose(jax.jacfwd(f)(X), jax.jacfwd(ref)(X), **TOL)
    elif transform == "jacrev":
        np.testing.assert_allclose(jax.jacrev(f)(X), jax.jacrev(ref)(X), **TOL)
    elif transform == "hessian":
        np.testing.assert_allclose(jax.hessian(s(f))(X), jax.hessian(s(ref))(X), **TOL)
    elif transform == "vmap":
        np.testing.assert_allclose(jax.vmap(f)(xs), jax.vmap(ref)(xs), **TOL)
        np.testing.assert_allclose(jax.vmap(f, in_axes=1, out_axes=1)(xs.T), ref(xs.T), **TOL)
    elif transform == "vmap_vmap":
        np.testing.assert_allclose(jax.vmap(jax.vmap(f))(xs[None]), ref(xs[None]), **TOL)
    elif transform == "jit_vmap":
        np.testing.assert_allclose(jax.jit(jax.vmap(f))(xs), ref(xs), **TOL)
    elif transform == "checkpoint":
        np.testing.assert_allclose(jax.checkpoint(f)(X), ref(X), **TOL)
        if op.name != "t_ac::hcube":
            g = jax.grad(s(jax.checkpoint(f)))(X)
            np.testing.assert_allclose(g, jax.grad(s(ref))(X), **TOL)
    elif transform == "scan":
        def body(c, x):
            return c + f(x), f(x)

        c, ys = lax.scan(body, jnp.zeros_like(X), xs)
        np.testing.assert_allclose(c, ref(xs).sum(0), **TOL)
        np.testing.assert_allclose(ys, ref(xs), **TOL)
    elif transform == "eval_shape":
        out = jax.eval_shape(f, jax.ShapeDtypeStruct((5, 3), jnp.float32))
        assert out.shape == (5, 3) and out.dtype == jnp.float32
    elif transform == "export":
        (b,) = export.symbolic_shape("b")
        exp = export.export(jax.jit(f))(jax.ShapeDtypeStruct((b,), jnp.float32))
        np.testing.assert_allclose(exp.call(X), ref(X), **TOL)
        exp2 = export.export(jax.jit(jax.vmap(f)))(xs)
        np.testing.assert_allclose(exp2.call(xs), ref(xs), **TOL)
    elif transform == "export_grad":
        exp = export.export(jax.jit(jax.grad(s(f))))(X)
        np.testing.assert_allclose(exp.call(X), jax.grad(s(ref))(X), **TOL)
    elif transform == "jit_grad_vmap":
        g = jax.jit(jax.grad(lambda x: jax.vmap(f)(x).sum()))(xs)
        np.testing.assert_allclose(g, jax.grad(lambda x: ref(x).sum())(xs), **TOL)
    elif transform == "vmap_grad":
        g = jax.vmap(jax.grad(s(f)))(xs)
        np.testing.assert_allclose(g, jax.vmap(jax.grad(s(ref)))(xs), **TOL)
    elif transform == "scan_grad_checkpoint":
        def loss(x, fn):
            def body(c, _):
                return jax.checkpoint(fn)(c) * 0.9 + c * 0.1, None

            return lax.scan(body, x, None, length=3)[0].sum()

        g = jax.jit(jax.grad(lambda x: loss(x, f)))(X)
        np.testing.assert_allclose(g, jax.grad(lambda x: loss(x, ref))(X), **TOL)
    elif transform == "jit_hessian":
        np.testing.assert_allclose(jax.jit(jax.hessian(s(f)))(X), jax.hessian(s(ref))(X), **TOL)
    elif transform == "vmap_jacfwd":
        np.testing.assert_allclose(jax.vmap(jax.jacfwd(f))(xs), jax.vmap(jax.jacfwd(ref))(xs), **TOL)
    else:  # pragma: no cover
        raise AssertionError(transform)


SHARD_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import jaxops
    assert jax.device_count() == 2
    mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))

    @jaxops.custom_op("sh_ac::tr", mutates_args=())
    def tr(x: jax.Array) -> jax.Array:
        return jnp.sin(x) * 2

    @jaxops.custom_op("sh_ac::hf", mutates_args=(), host=True)
    def hf(x: jax.Array) -> jax.Array:
        return x ** 3
    hf.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))

    @jaxops.custom_op("sh_ac::ha", mutates_args=(), host=True)
    def ha(x: jax.Array) -> jax.Array:
        return np.sin(x)
    ha.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
    def bwd(ctx, g):
        (x,) = ctx.saved_tensors
        return g * jnp.cos(x)
    ha.register_autograd(bwd, setup_context=setup)

    x = jnp.linspace(0.1, 1.0, 8, dtype=jnp.float32).reshape(4, 2)
    xs = jax.device_put(x, NamedSharding(mesh, P("d", None)))
    for op, ref in ((tr, lambda a: jnp.sin(a) * 2), (hf, lambda a: a ** 3), (ha, jnp.sin)):
        np.testing.assert_allclose(jax.jit(op)(xs), ref(x), rtol=1e-5)
        sm = jax.jit(jax.shard_map(op, mesh=mesh, in_specs=P("d", None), out_specs=P("d", None)))
        np.testing.assert_allclose(sm(xs), ref(x), rtol=1e-5)
        if op is not hf:
            g = jax.jit(jax.grad(lambda a: op(a).sum()))(xs)
            np.testing.assert_allclose(g, jax.grad(lambda a: ref(a).sum())(x), rtol=1e-5)
        v = jax.jit(jax.vmap(op))(xs)
        np.testing.assert_allclose(v, ref(x), rtol=1e-5)
    # a traceable op (no registered backward) differentiated inside shard_map
    gs = jax.jit(jax.grad(lambda a: jax.shard_map(tr, mesh=mesh, in_specs=P("d", None),
                                                  out_specs=P("d", None))(a).sum()))(xs)
    np.testing.assert_allclose(gs, 2 * jnp.cos(x), rtol=1e-5)
    print("SHARD AC OK")
    """
)


def test_sharded_jit_and_shard_map_for_all_three_kinds():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and "SHARD AC OK" in r.stdout, r.stderr[-4000:]


def test_errors_name_op_and_parameter(trace_op):
    with pytest.raises(Exception, match=lit("t_ac::tsin")) as ei:
        trace_op("not an array")
    assert not isinstance(ei.value, AssertionError)
    assert "'x'" in str(ei.value)
    with pytest.raises(Exception, match=lit("t_ac::tsin")) as ei:
        trace_op(X, k="nope")
    assert "'k'" in str(ei.value) and not isinstance(ei.value, AssertionError)
    with pytest.raises(Exception, match=lit("'x'")):
        jax.jit(lambda: trace_op([X]))()
    with pytest.raises(TypeError, match=lit("t_ac::tsin")):
        trace_op(X, bogus=1)
    with pytest.raises(TypeError, match=lit("t_ac::tsin")):
        trace_op()


def test_host_kernel_error_is_ordinary_exception_under_jit_naming_op():
    @jaxops.custom_op("t_ac::boom", mutates_args=(), host=True)
    def boom(x: jax.Array) -> jax.Array:
        raise KeyError("inner-problem")

    boom.register_fake(lambda x: x)
    with pytest.raises(Exception, match=lit("t_ac::boom")) as ei:
        jax.block_until_ready(jax.jit(boom)(X))
    assert not isinstance(ei.value, AssertionError)


# --------------------------------------------------------------------------- §1 declaring


def test_section1_example_verbatim():
    @jaxops.custom_op("mylib_ac::scale_add", mutates_args=())
    def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x + alpha * y

    assert scale_add.schema == "(Tensor x, Tensor y, float alpha=1.0) -> Tensor"
    assert scale_add.name == "mylib_ac::scale_add"
    x, y = jnp.ones(3), jnp.arange(3.0)
    np.testing.assert_allclose(jaxops.ops.mylib_ac.scale_add(x, y), x + y)
    assert isinstance(jaxops.ops.mylib_ac.scale_add(x, y), jax.Array)
    for attr in ("register_fake", "register_kernel", "register_autograd", "register_vmap", "register_sharding"):
        assert callable(getattr(scale_add, attr)), attr
    assert "mylib_ac::scale_add" in repr(scale_add)


def test_custom_op_fn_positional_form_and_signature():
    def f(x: jax.Array) -> jax.Array:
        return x * 3

    op = jaxops.custom_op("t_ac::posfn", f, mutates_args=())
    assert isinstance(op, jaxops.CustomOp)
    np.testing.assert_allclose(op(X), X * 3)
    with pytest.raises(TypeError):
        jaxops.custom_op(name="t_ac::kwname", mutates_args=())(f)  # name is positional-only
    with pytest.raises(TypeError):
        jaxops.custom_op("t_ac::nomut")(f)  # mutates_args is required
    with pytest.raises(TypeError):
        jaxops.custom_op("t_ac::posmut", f, ())  # and keyword-only


@pytest.mark.parametrize("ns", ["jax", "lax", "jnp", "aten", "prim", "prims"])
def test_reserved_namespaces(ns):
    with pytest.raises(ValueError, match=lit("is a reserved namespace")):
        jaxops.custom_op(f"{ns}::foo", mutates_args=())(lambda x: x)


@pytest.mark.parametrize("name", ["foo", "mylib:foo", "mylib.foo"])
def test_missing_namespace(name):
    def f(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(ValueError, match="namespace"):
        jaxops.custom_op(name, mutates_args=())(f)


def test_mutates_args_unknown_and_other_string():
    def f(x: jax.Array, y: jax.Array, n: int) -> None:
        x[...] = y

    op = jaxops.custom_op("t_ac::unk", mutates_args="unknown")(f)
    assert op.schema == "(Tensor(a0!) x, Tensor(a1!) y, SymInt n) -> ()"
    with pytest.raises(ValueError):
        jaxops.custom_op("t_ac::unk2", mutates_args="x")(f)
    with pytest.raises(ValueError):
        jaxops.custom_op("t_ac::unk3", mutates_args="all")(f)


def test_mutates_args_any_iterable():
    def f(x: jax.Array, y: jax.Array) -> None:
        x[...] = y

    for m in (["x"], ("x",), {"x"}, (n for n in ["x"]), frozenset({"x"})):
        op = jaxops.custom_op("t_ac::iter", mutates_args=m)(f)
        assert op.schema == "(Tensor(a0!) x, Tensor y) -> ()"


def test_explicit_schema_and_its_agreement_with_mutates_args():
    def f(x, y):
        return x + y

    op = jaxops.custom_op("t_ac::explicit", mutates_args=(), schema="(Tensor x, Tensor y) -> Tensor")(f)
    assert op.schema == "(Tensor x, Tensor y) -> Tensor"
    np.testing.assert_allclose(op(X, X), 2 * X)

    def g(x, y):
        x[...] = y

    with pytest.raises(ValueError, match=lit("the op mutates")):
        jaxops.custom_op("t_ac::explicit2", mutates_args=(), schema="(Tensor(a!) x, Tensor y) -> ()")(g)
    with pytest.raises(ValueError, match=lit("the op mutates")):
        jaxops.custom_op("t_ac::explicit3", mutates_args=("x",), schema="(Tensor x, Tensor y) -> ()")(g)
    ok = jaxops.custom_op("t_ac::explicit4", mutates_args=("x",), schema="(Tensor(a!) x, Tensor y) -> ()")(g)
    assert "Tensor(a!) x" in ok.schema


def test_host_body_gets_numpy_and_may_return_numbers():
    seen = []

    @jaxops.custom_op("t_ac::hnum", mutates_args=(), host=True)
    def hnum(x: jax.Array) -> float:
        seen.append(type(x))
        return float(np.sum(x))

    out = hnum(X)
    assert seen == [np.ndarray]
    assert out == pytest.approx(float(X.sum()), rel=1e-6)

    @jaxops.custom_op("t_ac::hpair", mutates_args=(), host=True)
    def hpair(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x + 1, (x * 2).astype(np.float32)

    hpair.register_fake(lambda x: (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype)))
    a, b = hpair(X)
    assert isinstance(a, jax.Array) and isinstance(b, jax.Array)
    a2, b2 = jax.jit(hpair)(X)
    np.testing.assert_allclose(a2, X + 1)
    np.testing.assert_allclose(b2, X * 2)


def test_redefining_replaces_lookup_and_calls():
    def v1(x: jax.Array) -> jax.Array:
        return x + 1

    def v2(x: jax.Array) -> jax.Array:
        return x + 2

    a = jaxops.custom_op("t_ac::redef", mutates_args=())(v1)
    jit_by_name = jax.jit(lambda x: jaxops.ops.t_ac.redef(x))
    np.testing.assert_allclose(jit_by_name(X), X + 1)
    b = jaxops.custom_op("t_ac::redef", mutates_args=())(v2)
    assert jaxops.ops.t_ac.redef.default is b
    np.testing.assert_allclose(jaxops.ops.t_ac.redef(X), X + 2)
    np.testing.assert_allclose(b(X), X + 2)
    del a


def test_redefining_a_host_op_drops_the_old_fake():
    @jaxops.custom_op("t_ac::redef_h", mutates_args=(), host=True)
    def h(x: jax.Array) -> jax.Array:
        return x

    h.register_fake(lambda x: x)

    @jaxops.custom_op("t_ac::redef_h", mutates_args=(), host=True)
    def h2(x: jax.Array) -> jax.Array:
        return x

    h2.register_fake(lambda x: x)  # no "second fake" error: it is a new op

    @jaxops.custom_op("t_ac::redef_h", mutates_args=(), host=True)
    def h3(x: jax.Array) -> jax.Array:
        return x + 1

    with pytest.raises(RuntimeError, match=lit("no fake impl")):
        jax.jit(jaxops.ops.t_ac.redef_h)(X)


# --------------------------------------------------------------------------- §1 infer_schema


@pytest.mark.parametrize(
    "ann,expected",
    [
        (jax.Array, "Tensor"),
        (jnp.ndarray, "Tensor"),
        (np.ndarray, "Tensor"),
        (int, "SymInt"),
        (float, "float"),
        (bool, "bool"),
        (str, "str"),
        (Number, "Scalar"),
        (jnp.dtype, "ScalarType"),
        (np.dtype, "ScalarType"),
        (jax.typing.DTypeLike, "ScalarType"),
        (jax.Device, "Device"),
        (Optional[jax.Array], "Tensor?"),
        (jax.Array | None, "Tensor?"),
        (Optional[int], "SymInt?"),
        (float | None, "float?"),
        (Sequence[jax.Array], "Tensor[]"),
        (list[jax.Array], "Tensor[]"),
        (typing.List[jax.Array], "Tensor[]"),  # noqa: UP006
        (list[int], "SymInt[]"),
        (Sequence[float], "float[]"),
        (list[bool], "bool[]"),
        (list[Optional[jax.Array]], "Tensor?[]"),
        (Sequence[jax.Array | None], "Tensor?[]"),
        (Optional[list[jax.Array]], "Tensor[]?"),
        (list[int] | None, "SymInt[]?"),
        (Optional[Sequence[float]], "float[]?"),
    ],
)
def test_infer_param_mapping(ann, expected):
    def f(x):
        pass

    f.__annotations__ = {"x": ann, "return": jax.Array}
    assert jaxops.infer_schema(f, mutates_args=()) == f"({expected} x) -> Tensor"


def test_jaxtyping_param():
    jaxtyping = pytest.importorskip("jaxtyping")
    from jaxtyping import Array, Float, Int

    def f(x: Float[Array, "b n"], y: Int[Array, " n"], z: jaxtyping.Shaped[Array, "..."]) -> Float[Array, "b n"]:
        return x

    assert jaxops.infer_schema(f, mutates_args=()) == "(Tensor x, Tensor y, Tensor z) -> Tensor"


@pytest.mark.parametrize(
    "ret,expected",
    [
        (jax.Array, "Tensor"),
        (list[jax.Array], "Tensor[]"),
        (int, "SymInt"),
        (float, "float"),
        (bool, "bool"),
        (Number, "Scalar"),
        (tuple[jax.Array, int], "(Tensor, SymInt)"),
        (tuple[jax.Array, list[jax.Array], float, bool, Number], "(Tensor, Tensor[], float, bool, Scalar)"),
        (None, "()"),
        (tuple[jax.Array], "((Tensor))"),  # PyTorch's own spelling of a 1-tuple
    ],
)
def test_infer_return_mapping(ret, expected):
    def f(x):
        pass

    f.__annotations__ = {"x": jax.Array, "return": ret}
    assert jaxops.infer_schema(f, mutates_args=()) == f"(Tensor x) -> {expected}"


def test_one_tuple_return_stays_a_one_tuple_at_run_time():
    @jaxops.custom_op("t_ac::one", mutates_args=())
    def one(x: jax.Array) -> tuple[jax.Array]:
        return (x * 2,)

    for out in (one(X), jax.jit(one)(X)):
        assert isinstance(out, tuple) and len(out) == 1
        np.testing.assert_allclose(out[0], X * 2)

    @jaxops.custom_op("t_ac::one_h", mutates_args=(), host=True)
    def one_h(x: jax.Array) -> tuple[jax.Array]:
        return (x * 2,)

    one_h.register_fake(lambda x: (jax.ShapeDtypeStruct(x.shape, x.dtype),))
    for out in (one_h(X), jax.jit(one_h)(X)):
        assert isinstance(out, tuple) and len(out) == 1
    out = jax.eval_shape(one_h, X)
    assert isinstance(out, tuple) and len(out) == 1


def test_tuple_and_scalar_returns_at_run_time():
    @jaxops.custom_op("t_ac::multi", mutates_args=())
    def multi(x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        return x + 1, [x, x * 2]

    a, b = multi(X)
    assert isinstance(b, list) and len(b) == 2
    a, b = jax.jit(multi)(X)
    assert isinstance(b, list) and len(b) == 2
    np.testing.assert_allclose(b[1], X * 2)


def test_format_kwonly_and_defaults_verbatim():
    def f(
        x: jax.Array,
        *,
        y: int,
        z: float,
        b: float = 3.14,
        a: Optional[int] = None,
        e: str = "foo",
        f: jnp.dtype = jnp.float32,
        j: jax.Device = "cpu",
    ) -> jax.Array:
        return x

    s = jaxops.infer_schema(f, mutates_args=())
    assert s == (
        '(Tensor x, *, SymInt y, float z, float b=3.14, SymInt? a=None, str e="foo", '
        'ScalarType f=float32, Device j="cpu") -> Tensor'
    )


def test_dtype_defaults_render_float32():
    def f(x: jax.Array, f: jnp.dtype = jnp.float32, g: np.dtype = F32) -> jax.Array:
        return x

    assert jaxops.infer_schema(f, mutates_args=()) == "(Tensor x, ScalarType f=float32, ScalarType g=float32) -> Tensor"


def test_format_with_op_name():
    def f(x: jax.Array) -> jax.Array:
        return x

    assert jaxops.infer_schema(f, mutates_args=(), op_name="myop") == "myop(Tensor x) -> Tensor"


def test_verbatim_examples():
    def a(x: jax.Array, y: int, z: bool, a: float, b: jnp.dtype, c: jax.Device, d: Number) -> tuple[
        jax.Array, int, float, bool
    ]:
        pass

    assert (
        jaxops.infer_schema(a, mutates_args=())
        == "(Tensor x, SymInt y, bool z, float a, ScalarType b, Device c, Scalar d) -> (Tensor, SymInt, float, bool)"
    )

    def b(x: jax.Array, y: Sequence[jax.Array], z: Optional[jax.Array], w: Sequence[Optional[jax.Array]]) -> list[
        jax.Array
    ]:
        pass

    assert jaxops.infer_schema(b, mutates_args=()) == "(Tensor x, Tensor[] y, Tensor? z, Tensor?[] w) -> Tensor[]"

    def c(x: jax.Array, y: Sequence[jax.Array], z: Sequence[jax.Array], w: Sequence[Optional[jax.Array]]) -> None:
        pass

    assert (
        jaxops.infer_schema(c, mutates_args={"x", "z", "w"})
        == "(Tensor(a0!) x, Tensor[] y, Tensor(a2!)[] z, Tensor(a3!)?[] w) -> ()"
    )


def test_infer_schema_errors():
    def varargs(*args: jax.Array) -> jax.Array:
        pass

    def varkw(x: jax.Array, **kw: jax.Array) -> jax.Array:
        pass

    def noann(x) -> jax.Array:
        pass

    def noret(x: jax.Array):
        pass

    def badparam(x: jax.Array, y: dict) -> jax.Array:
        pass

    def tupparam(x: jax.Array, y: tuple[int, int]) -> jax.Array:
        pass

    def badret(x: jax.Array) -> dict:
        pass

    def mut_nonarray(x: jax.Array, n: int) -> None:
        pass

    cases = [
        (varargs, (), "varargs"),
        (varkw, (), "varkwargs"),
        (noann, (), "must have a type annotation"),
        (noret, (), "No return type annotation was provided"),
        (badparam, (), "unsupported type"),
        (tupparam, (), "unsupported type"),
        (tupparam, (), "For example, list[int]"),
        (badret, (), "unsupported"),
        (mut_nonarray, ("n",), "can be mutated"),
        (mut_nonarray, ("q",), "in mutates_args were not found"),
    ]
    for fn, mut, msg in cases:
        with pytest.raises(ValueError, match=lit(msg)):
            jaxops.infer_schema(fn, mutates_args=mut)
        # the same errors come out of custom_op
        with pytest.raises(ValueError, match=lit(msg)):
            jaxops.custom_op(f"t_ac::err_{fn.__name__}", mutates_args=mut)(fn)


def test_kwarg_only_tensor_on_custom_op_is_not_implemented():
    def f(x: jax.Array, *, y: jax.Array) -> jax.Array:
        return x + y

    with pytest.raises(NotImplementedError, match=lit("kwarg-only Tensor args")):
        jaxops.custom_op("t_ac::kwt", mutates_args=())(f)
    assert jaxops.infer_schema(f, mutates_args=()) == "(Tensor x, *, Tensor y) -> Tensor"


def test_infer_schema_is_positional_and_mutates_args_keyword_only():
    def f(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(TypeError):
        jaxops.infer_schema(f, ())
    with pytest.raises(TypeError):
        jaxops.infer_schema(fn=f, mutates_args=())
    with pytest.raises(TypeError):
        jaxops.infer_schema(f)


def test_string_annotations_resolve_in_the_decorated_functions_module(tmp_path, monkeypatch):
    mod = tmp_path / "ac_strmod.py"
    mod.write_text(
        textwrap.dedent(
            """
            from __future__ import annotations
            from typing import Optional
            import jax
            import jaxops
            from jaxops.types import Number as Num
            Arr = jax.Array

            @jaxops.custom_op("t_ac_str::f", mutates_args=())
            def f(x: Arr, y: Optional[Arr], n: Num, k: list[int]) -> tuple[Arr, int]:
                return x, 1
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    m = importlib.import_module("ac_strmod")
    assert m.f.schema == "(Tensor x, Tensor? y, Scalar n, SymInt[] k) -> (Tensor, SymInt)"


# --------------------------------------------------------------------------- §2 kernels & devices


def test_register_kernel_device_types():
    @jaxops.custom_op("t_ac::dk", mutates_args=())
    def dk(x: jax.Array) -> jax.Array:
        return x

    for dt in ("cpu", "gpu", "cuda", "rocm", "tpu", ["cpu", "gpu"], ("cuda", "tpu"), None):
        dk.register_kernel(dt)(lambda x: x + 1)
    for bad in ("CPU_X", "metal", 3, ["cpu", "nope"]):
        with pytest.raises(ValueError):
            dk.register_kernel(bad)(lambda x: x)
        with pytest.raises(ValueError):
            jaxops.register_kernel(dk, bad, lambda x: x)


def test_cpu_kernel_wins_eager_and_under_jit_and_functional_forms():
    @jaxops.custom_op("t_ac::dk2", mutates_args=())
    def dk2(x: jax.Array) -> jax.Array:
        return x

    jaxops.register_kernel("t_ac::dk2", "cpu", lambda x: x + 10)
    np.testing.assert_allclose(dk2(XC), X + 10)
    np.testing.assert_allclose(jax.jit(dk2)(XC), X + 10)
    jaxops.register_kernel(dk2, "cpu")(lambda x: x + 20)  # decorator form
    np.testing.assert_allclose(dk2(XC), X + 20)
    np.testing.assert_allclose(jax.jit(dk2)(XC), X + 20)
    np.testing.assert_allclose(jax.grad(lambda x: dk2(x).sum())(XC), jnp.ones_like(X))


def test_register_kernel_host_true():
    seen = []

    @jaxops.custom_op("t_ac::dkh", mutates_args=())
    def dkh(x: jax.Array) -> jax.Array:
        return x * 2

    @dkh.register_kernel("cpu", host=True)
    def _(x):
        seen.append(type(x))
        return np.asarray(x) * 3

    np.testing.assert_allclose(dkh(XC), X * 3)
    assert seen and seen[-1] is np.ndarray
    dkh.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    np.testing.assert_allclose(jax.jit(dkh)(XC), X * 3)
    jaxops.register_kernel(dkh, "cpu", lambda x: np.asarray(x) * 4, host=True)
    np.testing.assert_allclose(jax.jit(dkh)(XC), X * 4)


def test_jit_kernel_selection_is_platform_dependent_in_hlo():
    @jaxops.custom_op("t_ac::pd", mutates_args=())
    def pd(x: jax.Array) -> jax.Array:
        return x + 1

    pd.register_kernel("gpu")(lambda x: x - 1)
    exp = export.export(jax.jit(pd), platforms=("cpu", "cuda"))(X)
    np.testing.assert_allclose(exp.call(XC), X + 1)  # the branch is the platform it runs on
    if has_gpu():
        np.testing.assert_allclose(exp.call(jax.device_put(X, jax.devices("gpu")[0])), X - 1)


def test_no_tensor_inputs():
    @jaxops.custom_op("t_ac::noin", mutates_args=())
    def noin(n: int) -> jax.Array:
        return jnp.zeros(n)

    with pytest.raises(Exception, match=lit("no Tensor inputs")):
        noin(3)

    @jaxops.custom_op("t_ac::fact", mutates_args=())
    def fact(n: int, device: jax.Device) -> jax.Array:
        return jnp.arange(n, dtype=jnp.float32)

    out = fact(3, jax.devices("cpu")[0])
    np.testing.assert_allclose(out, jnp.arange(3.0))
    np.testing.assert_allclose(fact(3, device="cpu"), jnp.arange(3.0))
    np.testing.assert_allclose(jax.jit(fact, static_argnums=(0, 1))(3, "cpu"), jnp.arange(3.0))


# --------------------------------------------------------------------------- §3 fakes


def test_register_fake_functional_and_second_fake_names_first_location():
    @jaxops.custom_op("t_ac::fk", mutates_args=(), host=True)
    def fk(x: jax.Array) -> jax.Array:
        return np.sort(x)

    def first(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    reg_line = sys._getframe().f_lineno + 1
    jaxops.register_fake("t_ac::fk", first)
    np.testing.assert_allclose(jax.jit(fk)(X[::-1]), X)
    with pytest.raises(RuntimeError) as ei:
        jaxops.register_fake(fk, lambda x: x)
    msg = str(ei.value)
    assert f"test_api_contract_ops.py:{reg_line}" in msg, msg
    with pytest.raises(RuntimeError, match=r"test_api_contract_ops\.py:\d+"):
        fk.register_fake(lambda x: x)


def test_register_fake_decorator_form_and_jnp_on_abstract_values():
    @jaxops.custom_op("t_ac::fk2", mutates_args=(), host=True)
    def fk2(x: jax.Array, y: jax.Array) -> jax.Array:
        return np.outer(x, y)

    @jaxops.register_fake("t_ac::fk2")
    def _(x, y):
        return jnp.empty((x.shape[0], y.shape[0]), jnp.result_type(x, y))

    out = jax.eval_shape(fk2, jax.ShapeDtypeStruct((3,), jnp.float32), jax.ShapeDtypeStruct((5,), jnp.float32))
    assert out.shape == (3, 5) and out.dtype == jnp.float32
    np.testing.assert_allclose(jax.jit(fk2)(X, X), np.outer(X, X), rtol=1e-6)


def test_eval_shape_of_traceable_op_needs_no_fake(trace_op):
    out = jax.eval_shape(trace_op, jax.ShapeDtypeStruct((2, 9), jnp.bfloat16))
    assert out.shape == (2, 9) and out.dtype == jnp.bfloat16


def test_host_op_without_fake_names_op_and_register_fake():
    @jaxops.custom_op("t_ac::nofake", mutates_args=(), host=True)
    def nofake(x: jax.Array) -> jax.Array:
        return x.copy()

    np.testing.assert_allclose(nofake(X), X)  # eager works
    for call in (
        lambda: jax.jit(nofake)(X),
        lambda: jax.eval_shape(nofake, X),
        lambda: jax.vmap(nofake)(X[None]),
        lambda: jaxops.plan(nofake, X),
    ):
        with pytest.raises(RuntimeError, match=lit("no fake impl")) as ei:
            call()
        assert "t_ac::nofake" in str(ei.value) and "register_fake" in str(ei.value)


def test_fake_from_jaxtyping_annotations():
    pytest.importorskip("jaxtyping")
    from jaxtyping import Array, Float

    @jaxops.custom_op("t_ac::amm", mutates_args=(), host=True)
    def amm(a: Float[Array, "m k"], b: Float[Array, "k n"]) -> Float[Array, "m n"]:
        return a @ b

    out = jax.eval_shape(amm, jax.ShapeDtypeStruct((2, 3), jnp.float32), jax.ShapeDtypeStruct((3, 4), jnp.float32))
    assert out.shape == (2, 4) and out.dtype == jnp.float32
    a, b = jnp.ones((2, 3)), jnp.ones((3, 4))
    np.testing.assert_allclose(jax.jit(amm)(a, b), a @ b)
    # promoted dtype of that kind
    out = jax.eval_shape(amm, jax.ShapeDtypeStruct((2, 3), jnp.float16), jax.ShapeDtypeStruct((3, 4), jnp.float32))
    assert out.dtype == jnp.float32
    with pytest.raises(TypeError) as ei:
        jax.eval_shape(amm, jax.ShapeDtypeStruct((2, 3), jnp.float32), jax.ShapeDtypeStruct((5, 4), jnp.float32))
    msg = str(ei.value)
    assert "t_ac::amm" in msg and "'b'" in msg and "'k'" in msg, msg
    with pytest.raises(TypeError, match=lit("t_ac::amm")):
        jax.jit(amm)(a, jnp.ones((5, 4)))
    with pytest.raises(TypeError, match=lit("t_ac::amm")):
        amm(a, jnp.ones((5, 4)))


def test_new_dynamic_size():
    @jaxops.custom_op("t_ac::nz", mutates_args=(), host=True)
    def nz(x: jax.Array) -> jax.Array:
        return np.nonzero(x)[0].astype(np.int32)

    @nz.register_fake
    def _(x):
        n = jaxops.get_ctx().new_dynamic_size(min=0, max=x.shape[0])
        return jax.ShapeDtypeStruct((n,), jnp.int32)

    x = jnp.array([0.0, 1.0, 0.0, 2.0])
    np.testing.assert_array_equal(nz(x), [1, 3])
    out = jax.eval_shape(nz, x)
    assert len(out.shape) == 1 and not isinstance(out.shape[0], int)
    p = jaxops.plan(nz, x)
    assert not isinstance(p.records[0]["outputs"][0].shape[0], int)
    with pytest.raises(RuntimeError, match=lit("data-dependent")) as ei:
        jax.jit(nz)(x)
    assert "t_ac::nz" in str(ei.value)

    @jaxops.custom_op("t_ac::nz2", mutates_args=(), host=True)
    def nz2(x: jax.Array) -> jax.Array:
        return x

    nz2.register_fake(lambda x: jax.ShapeDtypeStruct((jaxops.get_ctx().new_dynamic_size(min=-1),), x.dtype))
    with pytest.raises(ValueError, match=lit("greater than or equal to 0")):
        jax.eval_shape(nz2, x)


def test_new_dynamic_size_defaults():
    @jaxops.custom_op("t_ac::nz3", mutates_args=(), host=True)
    def nz3(x: jax.Array) -> jax.Array:
        return x[x > 0]

    nz3.register_fake(lambda x: jax.ShapeDtypeStruct((jaxops.get_ctx().new_dynamic_size(),), x.dtype))
    out = jax.eval_shape(nz3, X)
    assert len(out.shape) == 1


# --------------------------------------------------------------------------- §3 plan


def test_plan_records_and_totals(trace_op, host_fake_op):
    def model(x, w):
        return host_fake_op(trace_op(x @ w))

    x = jax.ShapeDtypeStruct((8, 4), jnp.float32)
    w = jax.ShapeDtypeStruct((4, 3), jnp.float32)
    p = jaxops.plan(model, x, w)
    assert isinstance(p, jaxops.Plan)
    assert isinstance(p.records, list)
    ops = [r["op"] for r in p.records]
    assert ops == ["t_ac::tsin", "t_ac::hcube"]
    for r in p.records:
        for k in ("op", "inputs", "outputs", "bytes", "flops"):
            assert k in r, k
        assert isinstance(r["inputs"], list) and isinstance(r["outputs"], list)
        assert all(isinstance(s, jax.ShapeDtypeStruct) for s in r["inputs"] + r["outputs"])
        assert r["bytes"] is None or isinstance(r["bytes"], int) or not isinstance(r["bytes"], float)
    assert p.records[0]["outputs"][0].shape == (8, 3)
    assert p.records[1]["flops"] is None or isinstance(p.records[1]["flops"], int)
    assert isinstance(p.totals, dict) and "bytes" in p.totals and "flops" in p.totals
    s = str(p)
    lines = [ln for ln in s.splitlines() if ln.strip()]
    assert lines[-1].lstrip().startswith("total"), s
    # concrete arrays are accepted as well, and kwargs are forwarded
    p2 = jaxops.plan(lambda x, *, w: model(x, w), jnp.ones((8, 4)), w=jnp.ones((4, 3)))
    assert [r["op"] for r in p2.records] == ops


def test_plan_symbolic_shapes(trace_op):
    (b,) = export.symbolic_shape("b")
    p = jaxops.plan(trace_op, jax.ShapeDtypeStruct((b, 4), jnp.float32))
    assert p.records[0]["outputs"][0].shape[0] is not None
    assert str(p.records[0]["outputs"][0].shape[0]) == "b"
    assert "b" in str(p.totals["bytes"])


# --------------------------------------------------------------------------- §3 profiles


def test_profiles_round_trip_and_serve(tmp_path):
    @jaxops.custom_op("t_ac::prof", mutates_args=(), host=True)
    def prof(x: jax.Array, k: int) -> jax.Array:
        return np.repeat(x, k)

    prof.register_fake(lambda x, k: jax.ShapeDtypeStruct((x.shape[0] * k,), x.dtype))
    with jaxops.record_op_profiles() as profiles:
        prof(X, 2)
    assert isinstance(profiles, dict) and "t_ac::prof" in profiles
    assert isinstance(profiles["t_ac::prof"], set)
    (p,) = profiles["t_ac::prof"]
    assert isinstance(p, jaxops.OpProfile)
    assert isinstance(p.args_profile, tuple) and p.args_profile[1] == 2
    assert isinstance(p.args_profile[0], jaxops.TensorMetadata)
    assert isinstance(p.out_profile, jaxops.TensorMetadata)

    path = tmp_path / "p.yaml"
    jaxops.save_op_profiles(profiles, path)
    text = path.read_text()
    assert "version" in text
    assert jaxops.load_op_profiles(path) == profiles
    assert jaxops.load_op_profiles(str(path)) == profiles
    buf = io.StringIO()
    jaxops.save_op_profiles(profiles, buf)
    buf.seek(0)
    assert jaxops.load_op_profiles(buf) == profiles

    md = jaxops.TensorMetadata(1, jnp.float32, "cpu")
    hand = {"t_ac::prof": {jaxops.OpProfile((md, 2), md)}}
    with jaxops.unsafe_generate_fake_kernels(hand):
        out = jax.eval_shape(lambda x: prof(x, 2), X)
        assert out.ndim == 1 and out.dtype == jnp.float32
        with pytest.raises(jaxops.MissingOpProfile, match=lit("t_ac::prof")):
            jax.eval_shape(lambda x: prof(x, 3), X)
        with pytest.raises(jaxops.MissingOpProfile, match=lit("t_ac::prof")):
            jax.eval_shape(lambda x: prof(x, 2), jnp.ones((2, 2)))


def test_profile_loading_is_safe(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"version: 0.1.0\nx: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError):
        jaxops.load_op_profiles(bad)
    assert not marker.exists()
    old = tmp_path / "old.yaml"
    old.write_text("version: 0.0.0-ancient\nops: {}\n")
    with pytest.raises(RuntimeError, match=lit("Unable to load outdated profile")):
        jaxops.load_op_profiles(old)


# --------------------------------------------------------------------------- §8 Library


def test_library_def_impl_dispatch_keys_and_destroy():
    lib = jaxops.Library("t_ac_lib", "DEF")
    lib.define("foo(Tensor x, int y=2) -> Tensor")
    lib.impl("foo", lambda x, y=2: x * y, "default")
    foo = jaxops.ops.t_ac_lib.foo
    np.testing.assert_allclose(foo(XC), X * 2)
    np.testing.assert_allclose(foo(XC, 3), X * 3)
    np.testing.assert_allclose(foo(XC, y=4), X * 4)
    np.testing.assert_allclose(jax.jit(foo)(XC), X * 2)
    lib.impl("foo", lambda x, y=2: x * y + 100, "cpu")
    np.testing.assert_allclose(foo(XC), X * 2 + 100)  # platform key wins over default
    np.testing.assert_allclose(jax.jit(foo)(XC), X * 2 + 100)
    np.testing.assert_allclose(jax.grad(lambda x: foo(x).sum())(XC), 2 * jnp.ones_like(X))

    lib.define("hfoo(Tensor x) -> Tensor")
    lib.impl("hfoo", lambda x: np.sort(x), "cpu", host=True)
    lib.impl("hfoo", lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), "Meta")
    np.testing.assert_allclose(jax.jit(jaxops.ops.t_ac_lib.hfoo)(XC[::-1]), X)

    lib.define("cia(Tensor x) -> Tensor")
    lib.impl("cia", lambda x: jnp.sin(x), "CompositeImplicitAutograd")
    np.testing.assert_allclose(jax.grad(lambda x: jaxops.ops.t_ac_lib.cia(x).sum())(X), jnp.cos(X), **TOL)

    lib._destroy()
    with pytest.raises(AttributeError):
        jaxops.ops.t_ac_lib.foo  # noqa: B018


def test_library_kinds_and_fragment_impl():
    with pytest.raises(ValueError):
        jaxops.Library("t_ac_lib2", "BOGUS")
    d = jaxops.Library("t_ac_lib2", "DEF")
    frag = jaxops.Library("t_ac_lib2", "FRAGMENT")
    frag.define("bar(Tensor x) -> Tensor")
    im = jaxops.Library("t_ac_lib2", "IMPL")
    im.impl("bar", lambda x: x + 5, "default")
    np.testing.assert_allclose(jaxops.ops.t_ac_lib2.bar(X), X + 5)
    im._destroy()
    frag._destroy()
    d._destroy()


def test_define_and_impl_functions():
    lib = jaxops.Library("t_ac_lib3", "FRAGMENT")
    try:
        jaxops.define("t_ac_lib3::baz", "(Tensor x, float a=1.5) -> Tensor", lib=lib)
        jaxops.impl("t_ac_lib3::baz", "cpu", lambda x, a=1.5: x * a, lib=lib)
        np.testing.assert_allclose(jaxops.ops.t_ac_lib3.baz(XC), X * 1.5)

        @jaxops.impl("t_ac_lib3::baz", "default", lib=lib)
        def _(x, a=1.5):
            return x

        np.testing.assert_allclose(jaxops.ops.t_ac_lib3.baz(XC), X * 1.5)  # cpu still wins
        jaxops.define("t_ac_lib3::hq", "(Tensor x) -> Tensor", lib=lib)
        jaxops.impl("t_ac_lib3::hq", "cpu", lambda x: np.asarray(x) + 1, lib=lib, host=True)
        jaxops.impl("t_ac_lib3::hq", "Meta", lambda x: x, lib=lib)
        np.testing.assert_allclose(jax.jit(jaxops.ops.t_ac_lib3.hq)(XC), X + 1)
    finally:
        lib._destroy()


@pytest.mark.parametrize(
    "schema,hint",
    [
        ("f(int64_t x) -> Tensor", "Use `SymInt` or `int`"),
        ("f(Tensor x, double y) -> Tensor", "Use `float`"),
    ],
)
def test_schema_hints(schema, hint):
    lib = jaxops.Library("t_ac_lib4", "FRAGMENT")
    try:
        with pytest.raises((ValueError, RuntimeError), match=lit(hint)):
            lib.define(schema)
    finally:
        lib._destroy()


@pytest.mark.parametrize("schema", ["f(Tensor x -> Tensor", "f(Tensor x) ->", "f(Tensor x) -> Tensor junk more", "(Tensor"])
def test_malformed_schema_raises_with_position(schema):
    lib = jaxops.Library("t_ac_lib5", "FRAGMENT")
    try:
        with pytest.raises((ValueError, RuntimeError)) as ei:
            lib.define(schema)
        assert re.search(r"position \d+", str(ei.value)), str(ei.value)
    finally:
        lib._destroy()


def test_overloads_and_failed_match():
    lib = jaxops.Library("t_ac_lib6", "DEF")
    try:
        lib.define("add(Tensor x, Tensor y) -> Tensor")
        lib.define("add.Scalar(Tensor x, float y) -> Tensor")
        lib.impl("add", lambda x, y: x + y, "default")
        lib.impl("add.Scalar", lambda x, y: x + y * 10, "default")
        add = jaxops.ops.t_ac_lib6.add
        np.testing.assert_allclose(add.default(X, X), 2 * X)
        np.testing.assert_allclose(add.Scalar(X, 1.0), X + 10)
        np.testing.assert_allclose(add(X, X), 2 * X)
        np.testing.assert_allclose(add(X, 1.0), X + 10)
        with pytest.raises(Exception, match=lit("failed to match any schema")):
            add(X, "s")
    finally:
        lib._destroy()


def test_library_impl_for_undefined_op_names_it():
    lib = jaxops.Library("t_ac_lib7", "FRAGMENT")
    try:
        with pytest.raises(Exception, match=lit("t_ac_lib7::nothere")):
            lib.impl("nothere", lambda x: x, "default")
    finally:
        lib._destroy()


# --------------------------------------------------------------------------- §10 compile_counter


def test_compile_counter_value_and_grad_step(host_ag_op, trace_op):
    def loss(w, x):
        return (host_ag_op(trace_op(x * w)) ** 2).sum()

    @jax.jit
    def step(w, x):
        return jax.value_and_grad(loss)(w, x)

    w = jnp.float32(0.3)
    with jaxops.compile_counter() as c:
        vals = [step(w, X + i) for i in range(3)]
    assert c.traces["step"] == 1 and c.compiles["step"] == 1
    for i, (v, g) in enumerate(vals):
        ve, ge = jax.value_and_grad(loss)(w, X + i)
        np.testing.assert_allclose(v, ve, rtol=1e-5)
        np.testing.assert_allclose(g, ge, rtol=1e-5)
    with jaxops.compile_counter() as c2:
        step(w, X)
    assert c2.traces["step"] == 0 and c2.compiles["step"] == 0


def test_compile_counter_step_with_hooks_checkpoint_and_static_args(host_ag_op, host_fake_op):
    import custom_vjp

    def loss(w, x, scale):
        h = custom_vjp.grad_hook(x * w, lambda g: g * 0.5)
        y = custom_vjp.checkpoint(lambda a: host_ag_op(a) * scale)(h)
        z = host_fake_op(x * w)  # a host kernel with no backward: zero gradient, silently
        return (y**2).sum() + z.sum()

    step = jax.jit(jax.value_and_grad(loss), static_argnums=2)
    w = jnp.float32(0.7)
    xs = [X * i for i in range(1, 4)]
    with jaxops.autograd_fallback_mode("nothing"):
        with jaxops.compile_counter() as c:
            outs = [step(w, x, 2.0) for x in xs]
        assert c.traces["loss"] == 1 and c.compiles["loss"] == 1, (dict(c.traces), dict(c.compiles))
        with jaxops.compile_counter() as c:
            step(w, X, 3.0)  # a new static argument: one more trace and compile
            step(w, X, 3.0)
        assert c.traces["loss"] == 1 and c.compiles["loss"] == 1, (dict(c.traces), dict(c.compiles))
        for x, (v, g) in zip(xs, outs):
            ve, ge = jax.value_and_grad(loss)(w, x, 2.0)
            np.testing.assert_allclose(v, ve, rtol=1e-5)
            np.testing.assert_allclose(g, ge, rtol=1e-5)


@pytest.mark.parametrize("ns", ["jax", "aten", "prims"])
def test_library_on_a_reserved_namespace_is_refused(ns):
    with pytest.raises(ValueError, match=lit("is a reserved namespace")) as ei:
        jaxops.Library(ns, "FRAGMENT")
    assert "_probe" not in str(ei.value)


def test_library_second_def_for_a_namespace_and_unknown_dispatch_key():
    lib = jaxops.Library("t_ac_lib8", "DEF")
    try:
        with pytest.raises(RuntimeError, match=lit("t_ac_lib8")):
            jaxops.Library("t_ac_lib8", "DEF")
        lib.define("foo(Tensor x) -> Tensor")
        with pytest.raises(ValueError, match=lit("t_ac_lib8::foo")):
            lib.impl("foo", lambda x: x, "BogusKey")
        with pytest.raises(RuntimeError, match=lit("t_ac_lib8::foo")):
            jaxops.ops.t_ac_lib8.foo(X)  # defined, no kernel yet
    finally:
        lib._destroy()
    jaxops.Library("t_ac_lib8", "DEF")._destroy()  # the namespace is free again


def test_fallback_warning_comes_with_every_traced_derivative_not_just_the_first():
    # JAX caches derivatives of jitted jaxprs; the fallback must still apply on each new trace.
    @jaxops.custom_op("t_ac::hfb_again", mutates_args=(), host=True)
    def h(x: jax.Array) -> jax.Array:
        return x * 2

    h.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    for t in (jax.grad, jax.grad, jax.jacrev, jax.jacfwd, jax.jacfwd):
        with pytest.warns(UserWarning, match=lit("t_ac::hfb_again")):
            t(lambda x: h(x).sum())(X)
    with jaxops.autograd_fallback_mode("error"):
        for _ in range(2):
            with pytest.raises(RuntimeError, match=lit("no autograd formula")):
                jax.grad(lambda x: h(x).sum())(X)
    step = jax.jit(jax.grad(lambda x: h(x).sum()))
    with pytest.warns(UserWarning, match=lit("t_ac::hfb_again")):
        step(X)
    with jaxops.compile_counter() as c:
        step(X)  # the outer jit is still cached: no retrace, no recompile
    assert sum(c.traces.values()) == 0 and sum(c.compiles.values()) == 0


def test_jit_of_an_op_without_a_kernel_for_this_platform_names_the_op():
    @jaxops.custom_op("t_ac::gpuonly", mutates_args=(), device_types="gpu")
    def g(x: jax.Array) -> jax.Array:
        return x + 1

    msg = "t_ac::gpuonly: no kernel for device type 'cpu' (registered: gpu); register one with gpuonly.register_kernel('cpu')"
    with pytest.raises(RuntimeError, match=lit(msg)):
        g(XC)
    with pytest.raises(RuntimeError, match=lit(msg)):
        jax.jit(g)(XC)
    with pytest.raises(RuntimeError, match=lit(msg)):
        export.export(jax.jit(g), platforms=("cpu", "cuda"))(X)
    exp = export.export(jax.jit(g), platforms=("cuda", "rocm"))(X)  # every lowered platform has one
    assert exp.platforms == ("cuda", "rocm")
