"""The Pallas RMSNorm op (examples/pallas_ops.py).

On every machine: the op's reference path and ``opcheck`` on the CPU, and the Pallas
kernels themselves in interpret mode (``interpret=True`` runs them on the CPU) against
the ``jnp`` reference. On a GPU (``gpu`` marker): the op runs the compiled Pallas
kernels, forward and backward, which agree with the reference, and ``opcheck`` passes.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cpu_device

import jaxops
from jaxops.samples import sample_inputs

_PATH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "pallas_ops.py"
_NAME = "_jaxops_examples_pallas_ops"


def _load() -> Any:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


P = _load()


def _inputs(seed: int, shape: tuple[int, ...], dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
    w = jnp.asarray(1.0 + 0.2 * rng.standard_normal(shape[-1:], dtype=np.float32)).astype(dtype)
    dy = jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
    return x, w, dy


def _rel(a: jax.Array, b: jax.Array) -> float:
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    assert np.all(np.isfinite(a64))
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def _tol(dtype: Any) -> float:
    return 1e-5 if jnp.dtype(dtype) == jnp.float32 else 1e-2


# ------------------------------------------------------------------ every machine
def test_reference_matches_autodiff_of_the_reference():
    x, w, dy = _inputs(0, (6, 32), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    _, vjp = jax.vjp(lambda a, b: P.rms_norm_reference(a, b, 1e-5), x, w)
    dx, dw = P.rms_norm_backward_reference(dy, x, w, 1e-5)
    adx, adw = vjp(dy)
    assert _rel(dx, adx) < 1e-5 and _rel(dw, adw) < 1e-5


def test_op_on_the_cpu_runs_the_reference_and_passes_opcheck():
    cpu = cpu_device()
    with jax.default_device(cpu):
        x, w, dy = _inputs(1, (4, 8, 64), jnp.float32)
        out = P.rms_norm(x, w, 1e-5)
        assert out.devices() == {cpu}
        np.testing.assert_array_equal(out, P.rms_norm_reference(x, w, 1e-5))
        dx, dw = jax.grad(lambda a, b: jnp.sum(P.rms_norm(a, b, 1e-5) * dy), argnums=(0, 1))(x, w)
        rdx, rdw = P.rms_norm_backward_reference(dy, x, w, 1e-5)
        np.testing.assert_allclose(dx, rdx, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(dw, rdw, rtol=1e-5, atol=1e-5)
        for op in (P.rms_norm, P.rms_norm_backward):
            for args, kwargs in sample_inputs(op):
                result = jaxops.opcheck(op, args, kwargs)
                assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("prefetch", [0, 1, 2])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(16, 128), (3, 8, 64), (5, 256)])
def test_pallas_kernels_in_interpret_mode_match_the_reference(shape, dtype, prefetch):
    x, w, dy = _inputs(2, shape, dtype)
    y = P.rms_norm_pallas(x, w, 1e-6, block_elements=256, interpret=True)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert _rel(y, P.rms_norm_reference(x, w, 1e-6)) < _tol(dtype)
    dx, dw = P.rms_norm_backward_pallas(
        dy, x, w, 1e-6, step_elements=128, rows_per_program=4, prefetch=prefetch, min_programs=1, interpret=True
    )
    rdx, rdw = P.rms_norm_backward_reference(dy, x, w, 1e-6)
    assert dx.dtype == x.dtype and dw.dtype == w.dtype and dw.shape == w.shape
    assert _rel(dx, rdx) < _tol(dtype) and _rel(dw, rdw) < _tol(dtype)


def test_supported_shapes_and_dtypes():
    f32 = jnp.zeros((4, 128), jnp.float32)
    assert P.rms_norm_gpu_supported(f32, jnp.ones(128))
    assert not P.rms_norm_gpu_supported(jnp.zeros((4, 100)), jnp.ones(100))  # not a power of two
    assert not P.rms_norm_gpu_supported(f32.astype(jnp.int32), jnp.ones(128))
    assert not P.rms_norm_gpu_supported(f32, jnp.ones(64))  # weight does not match
    assert not P.rms_norm_gpu_supported(jnp.zeros((0, 128)), jnp.ones(128))


# ------------------------------------------------------------------ GPU
def _gpu() -> jax.Device:
    return jax.devices("gpu")[0]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(512, 1024), (2, 64, 4096), (7, 256)])
def test_gpu_forward_and_backward_match_the_reference(shape, dtype):
    x, w, dy = jax.device_put(_inputs(3, shape, dtype), _gpu())
    y = P.rms_norm(x, w)
    assert y.devices() == {_gpu()} and y.dtype == dtype
    assert _rel(y, P.rms_norm_reference(x, w)) < _tol(dtype)
    assert _rel(jax.jit(P.rms_norm)(x, w), P.rms_norm_reference(x, w)) < _tol(dtype)
    grads = jax.jit(jax.grad(lambda a, b: jnp.sum((P.rms_norm(a, b) * dy).astype(jnp.float32)), argnums=(0, 1)))
    dx, dw = grads(x, w)
    rdx, rdw = P.rms_norm_backward_reference(dy, x, w)
    assert _rel(dx, rdx) < _tol(dtype) and _rel(dw, rdw) < _tol(dtype)


@pytest.mark.gpu
def test_gpu_program_contains_the_pallas_kernels_and_falls_back_otherwise():
    x, w, dy = jax.device_put(_inputs(4, (64, 512), jnp.bfloat16), _gpu())
    step = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(P.rms_norm(a, b).astype(jnp.float32) * dy), argnums=(0, 1)))
    text = step.lower(x, w).as_text()
    assert "rms_norm_fwd" in text and "rms_norm_bwd" in text  # the named pallas_calls
    xo, wo, _ = jax.device_put(_inputs(5, (8, 100), jnp.float32), _gpu())  # 100: not a power of two
    text = jax.jit(P.rms_norm).lower(xo, wo).as_text()
    assert "rms_norm_fwd" not in text
    assert _rel(P.rms_norm(xo, wo), P.rms_norm_reference(xo, wo)) < 1e-6


@pytest.mark.gpu
def test_gpu_opcheck():
    with jax.default_device(_gpu()):
        for op in (P.rms_norm, P.rms_norm_backward):
            for args, kwargs in sample_inputs(op):
                result = jaxops.opcheck(op, args, kwargs)
                assert set(result.values()) == {"SUCCESS"}, result
