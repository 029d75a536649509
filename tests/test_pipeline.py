"""jaxops.pipeline: how calls run (call forms and the hot path, stage nesting, eager fallbacks)."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

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
