"""jaxops.pipeline: how calls run (call forms and the hot path, stage nesting, eager fallbacks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops

X = jnp.arange(4.0)
Y = jnp.ones(4)
XB = jnp.arange(12.0).reshape(3, 4) / 10
COMPOSITION_SCRIPT = Path(__file__).parent / "scripts" / "composition_check.py"


def _count_binds(op: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every call of the op's slow binder."""
    binder = op.definition.binder
    calls: list[Any] = []
    original = binder.bind

    def spy(args: Any, kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return original(args, kwargs)

    monkeypatch.setattr(binder, "bind", spy)
    return calls


# ------------------------------------------------------- calls (from the op's view)
@pytest.fixture
def scale_add():
    @jaxops.custom_op("t_core::scale_add", mutates_args=())
    def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x + alpha * y

    return scale_add


def _hlo_ops(fn, *args):
    text = jax.jit(fn).lower(*args).compile().as_text()
    ops = re.findall(r"=\s*[a-z0-9\[\]{},]+\s+([a-z\-]+)\(", text)
    return sorted(o for o in ops if o not in ("parameter", "tuple", "get-tuple-element"))


def test_call_positional_keyword_default(scale_add):
    np.testing.assert_allclose(scale_add(X, Y), X + Y)
    np.testing.assert_allclose(scale_add(X, Y, 3.0), X + 3 * Y)
    np.testing.assert_allclose(scale_add(X, y=Y, alpha=2), X + 2 * Y)
    np.testing.assert_allclose(scale_add(np.asarray(X), Y), X + Y)


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


def test_int_parameter_that_must_be_static_names_static_argnums():
    # API.md §2: a traced scalar is accepted; where the kernel needs it static, the error says so
    @jaxops.custom_op("t_core::rep", mutates_args=())
    def rep(x: jax.Array, n: int) -> jax.Array:
        return jnp.tile(x, n)

    assert rep(X, 2).shape == (8,)
    with pytest.raises(TypeError, match=r"t_core::rep: argument 'n' got a traced value.*static_argnums"):
        jax.jit(lambda a, k: rep(a, k))(X, 2)
    assert jax.jit(lambda a, k: rep(a, k), static_argnums=1)(X, 2).shape == (8,)


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


# ------------------------------------------------------------------ call forms
def test_every_call_form_takes_the_hot_path_without_the_binder(monkeypatch):
    @jaxops.custom_op("pipe_fast::f", mutates_args=())
    def f(
        x: jax.Array, ys: list[jax.Array], b: jax.Array | None = None, alpha: float = 1.0, *, n: int = 2
    ) -> jax.Array:
        out = alpha * x + sum(ys) * n
        return out if b is None else out + b

    calls = _count_binds(f, monkeypatch)
    forms = [
        ((X, [Y]), {}, X + 2 * Y),
        ((X, [Y, Y], Y, 3.0), {"n": 1}, 3 * X + 2 * Y + Y),
        ((), {"x": X, "ys": (Y,), "alpha": 2.0}, 2 * X + 2 * Y),
        ((X, [Y]), {"b": None, "n": 3}, X + 3 * Y),
        ((np.asarray(X), [Y]), {"alpha": 2}, 2 * X + 2 * Y),  # converted by the checkers
    ]
    for args, kwargs, want in forms:
        np.testing.assert_allclose(f(*args, **kwargs), want, rtol=1e-6)
    assert calls == []
    assert f._pipeline.entry != f._pipeline.slow_entry


def test_hot_path_reports_binding_errors_like_the_binder():
    @jaxops.custom_op("pipe_err::f", mutates_args=())
    def f(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x + alpha * y

    with pytest.raises(TypeError, match=r"pipe_err::f\(\) missing required argument 'y'"):
        f(X)
    with pytest.raises(TypeError, match=r"pipe_err::f\(\) takes 3 positional argument\(s\) but 4 were given"):
        f(X, Y, 1.0, 2.0)
    with pytest.raises(TypeError, match=r"pipe_err::f\(\) got an unexpected keyword argument 'beta'"):
        f(X, Y, beta=1.0)
    with pytest.raises(TypeError, match=r"pipe_err::f\(\) got multiple values for argument 'x'"):
        f(X, Y, x=X)
    with pytest.raises(TypeError, match="argument 'alpha' must be a float"):
        f(X, Y, alpha="2")
    with pytest.raises(TypeError, match="argument 'y' must be an array"):
        f(X, y=[1.0])


def test_generated_call_has_a_real_filename_and_pickles_by_name():
    import pickle

    @jaxops.custom_op("pipe_tb::f", mutates_args=())
    def f(x: jax.Array, k: int = 2) -> jax.Array:
        return x * k

    with pytest.raises(TypeError) as info:
        f(X, k="3")
    frames = [fr for fr in traceback.extract_tb(info.value.__traceback__) if "pipe_tb::f" in fr.filename]
    assert frames and frames[0].filename == "<jaxops pipe_tb::f call>"
    assert frames[0].line  # the source is in linecache
    assert type(f) is jaxops.CustomOp
    assert pickle.loads(pickle.dumps(f)) is f


def test_recording_leaves_the_hot_path_and_records(monkeypatch):
    @jaxops.custom_op("pipe_rec::f", mutates_args=())
    def f(x: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x * alpha

    with jaxops.record_op_profiles() as profiles:
        f(X, alpha=2.0)
    assert "pipe_rec::f" in profiles
    calls = _count_binds(f, monkeypatch)
    f(X)
    assert calls == []


# ---------------------------------------------------------------- stage nesting
def test_composition_on_two_forced_cpu_devices():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    env["JAX_PLATFORMS"] = "cpu"  # the forced host devices, also on a GPU machine
    proc = subprocess.run([sys.executable, str(COMPOSITION_SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def _transforms(f: Any, x: Any) -> dict[str, Any]:
    loss = lambda v: (f(v) ** 2).sum()  # noqa: E731
    return {
        "call": f(x[0]),
        "jit": jax.jit(f)(x[0]),
        "vmap": jax.vmap(f)(x),
        "grad": jax.grad(loss)(x[0]),
        "jit(grad)": jax.jit(jax.grad(loss))(x[0]),
        "vmap(grad)": jax.vmap(jax.grad(loss))(x),
        "grad(vmap)": jax.grad(lambda v: (jax.vmap(f)(v) ** 2).sum())(x),
    }


def _check_transforms(got: dict[str, Any], f_ref: Any, x: Any) -> None:
    want = _transforms(f_ref, x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_mutation_vmap_rule_and_autograd_nest():
    rule_sizes: list[int] = []

    @jaxops.custom_op("pipe_mva::scale_", mutates_args={"x"})
    def scale_(x: jax.Array, k: float) -> None:
        x[...] = x[...] * k + 1.0

    @scale_.register_vmap
    def _(info, in_dims, x, k):
        rule_sizes.append(info.batch_size)
        return scale_(jnp.moveaxis(x, in_dims[0], 0), k), 0

    backward_calls: list[int] = []

    def backward(ctx, g):
        backward_calls.append(1)
        return g * ctx.k, None

    def setup_context(ctx, inputs, output):
        ctx.k = inputs[1]

    scale_.register_autograd(backward, setup_context=setup_context)
    got = _transforms(lambda v: scale_(v, 3.0), XB)
    _check_transforms(got, lambda v: v * 3.0 + 1.0, XB)
    assert rule_sizes and set(rule_sizes) == {3}  # vmap, vmap(grad), grad(vmap) used the rule
    assert backward_calls  # grad went through the registered backward
    assert "pipe_mva::scale_ vmap rule" in str(jax.make_jaxpr(jax.vmap(lambda v: scale_(v, 2.0)))(XB))


def test_host_vmap_rule_and_autograd_nest():
    batches: list[tuple[int, ...]] = []

    @jaxops.custom_op("pipe_hva::cube", mutates_args=(), host=True)
    def cube(x: jax.Array) -> jax.Array:
        batches.append(np.shape(x))
        return np.asarray(x) ** 3

    cube.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))

    @cube.register_vmap
    def _(info, in_dims, x):
        return cube(jnp.moveaxis(x, in_dims[0], 0)), 0  # one host call for the batch

    cube.register_autograd(lambda ctx, g: 3 * ctx.x**2 * g, setup_context=lambda ctx, inputs, out: setattr(ctx, "x", inputs[0]))
    with jaxops.autograd_fallback_mode("error"):  # the registered formula, never the fallback
        got = _transforms(cube, XB)
    _check_transforms(got, lambda v: v**3, XB)
    assert (3, 4) in batches  # the rule's whole-batch call reached the host kernel


def test_vmap_rule_keeps_a_traceable_op_differentiable():
    """Issue 17.1: a vmap rule on a traceable op without register_autograd."""

    @jaxops.custom_op("pipe_vg::sq", mutates_args=())
    def sq(x: jax.Array) -> jax.Array:
        return x * x

    used: list[int] = []

    @sq.register_vmap
    def _(info, in_dims, x):
        used.append(info.batch_size)
        return x * x, in_dims[0]

    np.testing.assert_allclose(jax.grad(lambda v: sq(v).sum())(jnp.arange(3.0)), 2 * jnp.arange(3.0))
    got = _transforms(sq, XB)
    _check_transforms(got, lambda v: v * v, XB)
    assert used  # the rule still batches the primal
    primal, tangent = jax.jvp(sq, (X,), (Y,))
    np.testing.assert_allclose(tangent, 2 * X)
    np.testing.assert_allclose(jax.hessian(lambda v: sq(v).sum())(X), 2 * jnp.eye(4))


def test_host_kernel_may_return_a_python_number():
    """Issue 17.3: host kernels return NumPy arrays or numbers (API §1)."""

    @jaxops.custom_op("pipe_num::dot", mutates_args=(), host=True)
    def dot(x: jax.Array) -> jax.Array:
        return float(np.dot(x, x))

    dot.register_fake(lambda x: jax.ShapeDtypeStruct((), x.dtype))
    assert isinstance(dot(X), jax.Array) and float(dot(X)) == 14.0
    np.testing.assert_allclose(jax.jit(dot)(X), 14.0)
    np.testing.assert_allclose(jax.vmap(dot)(XB), (XB * XB).sum(1), rtol=1e-6)

    @jaxops.custom_op("pipe_num::bad", mutates_args=(), host=True)
    def bad(x: jax.Array) -> jax.Array:
        return "14"

    with pytest.raises(RuntimeError, match=r"pipe_num::bad: return 0 must be an array \(Tensor\), got str"):
        bad(X)


def test_an_op_that_becomes_untraceable_leaves_the_hot_path():
    @jaxops.custom_op("pipe_dd::pos", mutates_args=())
    def pos(x: jax.Array) -> jax.Array:
        return x[x > 0]

    np.testing.assert_allclose(pos(jnp.array([-1.0, 2.0, 3.0])), [2.0, 3.0])
    assert pos._pipeline.entry == pos._pipeline.slow_entry
    np.testing.assert_allclose(pos(jnp.array([1.0, -2.0])), [1.0])
    pos.register_kernel(None, lambda x: x * 2)  # a registration starts over
    assert pos._pipeline.entry != pos._pipeline.slow_entry


# ------------------------------------------ the cache key: registrations and global modes
# ------------------------------------------------------------ autograd fallback
@pytest.fixture
def hsin_no_formula():
    @jaxops.custom_op("t_k::hsin_no_formula", mutates_args=(), host=True)
    def hsin_no_formula(x: jax.Array) -> jax.Array:
        return np.sin(x)

    hsin_no_formula.register_fake(lambda x: x)
    return hsin_no_formula


def test_mode_change_retraces_an_already_jitted_function(hsin_no_formula):
    f = jax.jit(jax.grad(lambda x: hsin_no_formula(x).sum()))
    with jaxops.autograd_fallback_mode("nothing"):
        np.testing.assert_allclose(f(X), jnp.zeros_like(X))
    with jaxops.autograd_fallback_mode("error"):
        with pytest.raises(RuntimeError, match="no autograd formula"):
            f(X)


def test_mode_set_inside_a_jitted_step_does_not_retrace_every_call(hsin_no_formula):
    traces = []

    @jax.jit
    def step(x):
        traces.append(1)
        with jaxops.autograd_fallback_mode("nothing"):
            return jax.grad(lambda a: hsin_no_formula(a).sum())(x)

    for _ in range(5):
        step(X)
    assert len(traces) <= 2  # modes enter the cache key by value: leaving one restores it


def test_jit_of_an_op_with_a_scalar_argument(scale_add):
    x, y = jnp.arange(3.0), jnp.ones(3)
    np.testing.assert_allclose(jax.jit(scale_add)(x, y, 2.0), [2.0, 3.0, 4.0])
    np.testing.assert_allclose(jax.jit(lambda a: scale_add(x, y, a))(3.0), [3.0, 4.0, 5.0])
    np.testing.assert_allclose(jax.grad(lambda a: scale_add(x, y, a).sum())(2.0), 3.0)


def test_traced_scalars_reach_host_kernels_as_numpy_scalars():
    seen = []

    @jaxops.custom_op("w2v::hscale", mutates_args=(), host=True)
    def hscale(x: jax.Array, alpha: float) -> jax.Array:
        seen.append(type(alpha))
        return x * alpha

    hscale.register_fake(lambda x, alpha: jax.ShapeDtypeStruct(x.shape, x.dtype))
    np.testing.assert_allclose(jax.jit(hscale)(jnp.ones(2), 4.0), [4.0, 4.0])
    assert seen and issubclass(seen[-1], np.generic)


@jaxops.custom_op("w2v::scale_add_v", mutates_args=())
def _scale_add_v(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
    return x + alpha * y


class TestScalarsUnderChexVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True, with_device=True)
    def test_scale_add(self):
        f = self.variant(_scale_add_v)
        np.testing.assert_allclose(f(jnp.arange(3.0), jnp.ones(3), 2.0), [2.0, 3.0, 4.0])


def test_a_static_parameter_given_a_tracer_names_static_argnums():
    @jaxops.custom_op("w2v::rep", mutates_args=())
    def rep(x: jax.Array, n: int) -> jax.Array:
        return jnp.tile(x, n)

    with pytest.raises(TypeError, match=r"w2v::rep.*'n'.*static_argnums"):
        jax.jit(rep)(jnp.ones(2), 3)
    np.testing.assert_allclose(jax.jit(rep, static_argnums=1)(jnp.ones(2), 3), np.ones(6))
