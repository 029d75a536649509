"""A C++ op (XLA FFI, ``jaxops.ffi``) side by side with the same op as a NumPy host op, ``jnp``
under ``jit``, and ``torch.library.custom_op`` (when torch is installed).

The op is a row-wise softmax (``examples/cpp_ops.py``).  For a tiny (4x8) and a large
(1024x1024) float32 input it prints per-call times (best of interleaved rounds, so
machine noise hits every candidate alike):

* eagerly: the op whose CPU kernel is C++ (beside a ``jnp`` reference default kernel),
  the op whose only kernel is the C++ one, the NumPy host op, ``jax.jit(jax.nn.softmax)``,
  and torch's ``custom_op`` around ``torch.softmax`` plus ``torch.softmax`` itself;
* under an outer ``jax.jit``: the C++ op, the host op (``pure_callback``) and ``jnp``.

Targets: under ``jit`` a tiny-input C++ op <= 1.2x the ``jnp`` version; eagerly <= 1.5x
``torch.library.custom_op``.  The build is cached (``$JAXOPS_FFI_CACHE``).

Run: ``python bench/ffi_ops.py``
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxops

ROOT = Path(__file__).resolve().parent.parent

try:  # torch evaluates string annotations in this module's globals
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


def per_call_us(f: Callable[..., Any], *args: Any, n: int) -> float:
    """Best-of-3 mean time per call in microseconds (results are waited for)."""
    jax.block_until_ready(f(*args))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            out = f(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("cpp_ops_bench", ROOT / "examples" / "cpp_ops.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cpp_ops_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ex = _example()
    t0 = time.perf_counter()
    module = ex.build()
    build_s = time.perf_counter() - t0

    only_cpp = jaxops.custom_op(
        "bench_ffi::softmax_only_cpp", lambda x: x, mutates_args=(), schema="(Tensor x) -> Tensor"
    )
    only_cpp.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    only_cpp.register_kernel(None, module.kernel("cpp_ops_softmax_fwd"))

    @jaxops.custom_op("bench_ffi::softmax_numpy", mutates_args=(), host=True)
    def softmax_numpy(x: jax.Array) -> jax.Array:
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    softmax_numpy.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))

    jnp_jit = jax.jit(lambda x: jax.nn.softmax(x, axis=-1))
    t_custom: Any = None
    if torch is not None:
        torch.set_num_threads(1)  # as JAX's CPU client runs these sizes on one thread

        @torch.library.custom_op("bench_ffi::softmax", mutates_args=())
        def t_custom(x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(x, -1)

    print(f"machine: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}"
          + (f", torch {torch.__version__}" if torch is not None else ""))
    print(f"build: {'compiled' if module.built else 'from cache'} in {build_s:.2f} s ({module.build_dir})")
    for label, shape, n in (("tiny 4x8", (4, 8), 2000), ("large 1024x1024", (1024, 1024), 20)):
        x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
        np.testing.assert_allclose(ex.softmax(x), jnp_jit(x), rtol=2e-5, atol=1e-7)
        eager: dict[str, tuple[Callable[..., Any], Any]] = {
            "C++ op (cpu kernel + jnp default), eager": (ex.softmax, x),
            "C++ op (only kernel), eager": (only_cpp, x),
            "NumPy host op, eager": (softmax_numpy, x),
            "jax.jit(jnp softmax), eager call": (jnp_jit, x),
        }
        jitted: dict[str, tuple[Callable[..., Any], Any]] = {
            "jit(C++ op)": (jax.jit(lambda v: ex.softmax(v) + 0), x),
            "jit(NumPy host op)": (jax.jit(lambda v: softmax_numpy(v) + 0), x),
            "jit(jnp softmax)": (jax.jit(lambda v: jax.nn.softmax(v, axis=-1) + 0), x),
        }
        if t_custom is not None:
            tx = torch.from_numpy(np.array(x))  # a writable copy
            eager["torch.library.custom_op, eager"] = (t_custom, tx)
            eager["torch.softmax, eager"] = (lambda v: torch.softmax(v, -1), tx)
        best: dict[str, float] = {}
        for _ in range(3):  # interleaved rounds
            for name, (f, arg) in {**eager, **jitted}.items():
                best[name] = min(best.get(name, float("inf")), per_call_us(f, arg, n=n))
        print(f"\n-- {label}")
        width = max(map(len, best)) + 2
        for name, t in best.items():
            print(f"{name:<{width}}{t:11.2f} us/call")
        r_jit = best["jit(C++ op)"] / best["jit(jnp softmax)"]
        print(f"ratio jit(C++ op) / jit(jnp):              {r_jit:6.2f}x"
              + ("   (target <= 1.2x)" if label.startswith("tiny") else ""))
        print(f"ratio jit(C++ op) / jit(NumPy host op):    {best['jit(C++ op)'] / best['jit(NumPy host op)']:6.2f}x")
        if t_custom is not None:
            tc = best["torch.library.custom_op, eager"]
            print(f"ratio C++ op eager / torch custom_op:      {best['C++ op (cpu kernel + jnp default), eager'] / tc:6.2f}x"
                  "   (target <= 1.5x)")
            print(f"ratio C++-only op eager / torch custom_op: {best['C++ op (only kernel), eager'] / tc:6.2f}x")


if __name__ == "__main__":
    main()
