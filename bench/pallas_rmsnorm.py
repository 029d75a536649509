"""Bandwidth of the Pallas RMSNorm (examples/pallas_ops.py) on a GPU, in one run.

For a large input (default 8192 x 8192 bfloat16) it measures, side by side:

* the device's copy bandwidth: a device-to-device copy (``torch`` ``Tensor.copy_``, a
  cudaMemcpy, when torch with CUDA is installed) and XLA's elementwise ``x * 2``;
* the forward: the op (Pallas kernel via ``register_kernel("gpu")``), the raw
  ``rms_norm_pallas`` call, and XLA's fusion of the ``jnp`` reference;
* the backward (``dx`` and ``dweight`` from ``dy``): the op's backward (Pallas) and
  XLA's fusion of the reference's ``jax.vjp``;
* with ``--sweep``, a sweep of block sizes and warps for both Pallas kernels (and, for the
  backward, band length and how many rows ahead it loads) on the largest size; the fastest
  configuration is then used for every row.

Two sizes by default: at 8192 x 8192 a call lasts about as long as JAX's dispatch of
it (tens of µs), so the larger one is the one that measures the device. Bandwidth counts the fewest bytes each computation must move: forward reads ``x`` and
writes ``y`` (plus the weight); backward reads ``x`` and ``dy`` and writes ``dx`` (plus the
weight and ``dweight``). Each figure is the median over repetitions of a loop of calls
dispatched back to back, closed by one ``block_until_ready``.

Run on a GPU machine: ``python bench/pallas_rmsnorm.py [--sizes 8192x8192,32768x8192] [--sweep]``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_PATH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "pallas_ops.py"


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("_bench_pallas_ops", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def seconds_per_call(f: Callable[..., Any], *args: Any, n: int = 30, reps: int = 11) -> float:
    """Median seconds per call of ``f(*args)`` over ``reps`` loops of ``n`` async calls."""
    jax.block_until_ready(f(*args))
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = None
        for _ in range(n):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def torch_copy_seconds(nbytes: int) -> float | None:
    """Seconds per device-to-device copy of an ``nbytes`` array through torch (None without CUDA torch).

    The copy moves ``2 * nbytes`` (it reads and writes the array).
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(30):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / 30)
    return statistics.median(times)


def rel_error(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ in float64 (NaN if ``a`` has a non-finite value)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.all(np.isfinite(a64)):
        return float("nan")
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def _inputs(n: int, d: int, dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    keys = jax.random.split(jax.random.PRNGKey(n + d), 3)
    x = jax.random.normal(keys[0], (n, d), jnp.float32).astype(dtype)
    dy = jax.random.normal(keys[1], (n, d), jnp.float32).astype(dtype)
    w = (1.0 + 0.1 * jax.random.normal(keys[2], (d,), jnp.float32)).astype(dtype)
    return x, w, dy


def sweep(P: Any, n: int, d: int, dtype: Any) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Time block sizes, warps, bands and load-ahead depths; return the fastest forward and backward."""
    x, w, dy = _inputs(n, d, dtype)
    lines: list[str] = []
    best_f: tuple[float, dict[str, int]] = (float("inf"), {})
    for be in (4096, 8192, 16384):
        for nw in (4, 8, 16):
            f = jax.jit(lambda x, w, be=be, nw=nw: P.rms_norm_pallas(x, w, block_elements=be, num_warps=nw))
            try:
                t = seconds_per_call(f, x, w, n=20, reps=5)
            except Exception as e:  # noqa: BLE001 - a config that does not compile is reported, not fatal
                lines.append(f"fwd block={be} warps={nw}: {type(e).__name__}: {str(e)[:100]}")
                continue
            lines.append(f"fwd block={be} warps={nw}: {t * 1e6:.1f} us")
            best_f = min(best_f, (t, {"block_elements": be, "num_warps": nw}), key=lambda b: b[0])
    best_b: tuple[float, dict[str, int]] = (float("inf"), {})
    for se in (8192, 16384):
        for rp in (64, 128):
            for nw in (8, 16):
                for pf in (0, 1, 2, 3):
                    if se > d and pf > 1:
                        continue  # two rows per step hold too many registers to load further ahead
                    cfg = {"step_elements": se, "rows_per_program": rp, "num_warps": nw, "prefetch": pf}
                    f = jax.jit(lambda dy, x, w, cfg=cfg: P.rms_norm_backward_pallas(dy, x, w, **cfg))
                    try:
                        t = seconds_per_call(f, dy, x, w, n=20, reps=5)
                    except Exception as e:  # noqa: BLE001
                        lines.append(f"bwd {cfg}: {type(e).__name__}: {str(e)[:100]}")
                        continue
                    lines.append(f"bwd {cfg}: {t * 1e6:.1f} us")
                    best_b = min(best_b, (t, cfg), key=lambda b: b[0])
    return best_f[1], best_b[1], lines


def measure(P: Any, n: int, d: int, dtype: Any) -> list[tuple[str, float, float]]:
    """Check the op against the reference on fresh inputs, then time every candidate."""
    x, w, dy = _inputs(n, d, dtype)
    item = jnp.dtype(dtype).itemsize
    fwd_bytes = 2 * n * d * item + d * item
    bwd_bytes = 3 * n * d * item + 2 * d * item
    op_fwd = jax.jit(P.rms_norm)
    op_bwd = jax.jit(lambda x, w, dy: jax.vjp(P.rms_norm, x, w)[1](dy))
    ref_fwd = jax.jit(P.rms_norm_reference)
    ref_bwd = jax.jit(lambda x, w, dy: jax.vjp(P.rms_norm_reference, x, w)[1](dy))
    (dx_op, dw_op), (dx_ref, dw_ref) = op_bwd(x, w, dy), ref_bwd(x, w, dy)
    errs = (rel_error(op_fwd(x, w), ref_fwd(x, w)), rel_error(dx_op, dx_ref), rel_error(dw_op, dw_ref))
    print(f"# {n} x {d} {jnp.dtype(dtype).name}: rel. error vs XLA reference: y {errs[0]:.2e}, dx {errs[1]:.2e}, dw {errs[2]:.2e}")
    assert all(e < 2e-2 for e in errs), errs
    assert "rms_norm_bwd" in op_bwd.lower(x, w, dy).as_text(), "the op's backward did not reach the Pallas kernel"
    assert "rms_norm_fwd" in op_fwd.lower(x, w).as_text(), "the op did not reach the Pallas kernel"

    rows: list[tuple[str, float, float]] = []

    def add(name: str, seconds: float, nbytes: float) -> None:
        rows.append((name, seconds * 1e6, nbytes / seconds / 1e12))

    t_copy = torch_copy_seconds(n * d * item)
    if t_copy is not None:
        add("D2D copy (torch copy_, read+write)", t_copy, 2 * n * d * item)
    add("XLA x * 2 (read+write)", seconds_per_call(jax.jit(lambda v: v * 2), x), 2 * n * d * item)
    add("fwd: op (Pallas via register_kernel)", seconds_per_call(op_fwd, x, w), fwd_bytes)
    add("fwd: raw rms_norm_pallas", seconds_per_call(jax.jit(P.rms_norm_pallas), x, w), fwd_bytes)
    add("fwd: XLA fusion of jnp reference", seconds_per_call(ref_fwd, x, w), fwd_bytes)
    add("bwd: op (Pallas backward op)", seconds_per_call(op_bwd, x, w, dy), bwd_bytes)
    add("bwd: raw rms_norm_backward_pallas", seconds_per_call(jax.jit(P.rms_norm_backward_pallas), dy, x, w), bwd_bytes)
    add("bwd: XLA fusion of jax.vjp(reference)", seconds_per_call(ref_bwd, x, w, dy), bwd_bytes)
    t_copy = torch_copy_seconds(n * d * item)
    if t_copy is not None:
        add("D2D copy again (torch copy_)", t_copy, 2 * n * d * item)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8192x8192,32768x8192", help="comma-separated ROWSxCOLS")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--sweep", action="store_true", help="tune block sizes, warps and stages first (on the largest size) and use the fastest")
    a = parser.parse_args()
    P = _load_example()
    dev = jax.devices()[0]
    dtype = jnp.dtype(a.dtype)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {dev.device_kind}, JAX {jax.__version__}")

    # Bring the clocks up before anything is timed (an idle GPU starts slow).
    warm = jnp.ones((8192, 8192), dtype)
    spin = jax.jit(lambda v: v * 2)
    t_end = time.perf_counter() + 1.5
    while time.perf_counter() < t_end:
        jax.block_until_ready([spin(warm) for _ in range(10)])
    del warm

    if a.sweep:
        n, d = max(sizes, key=lambda s: s[0] * s[1])
        fwd_cfg, bwd_cfg, lines = sweep(P, n, d, dtype)
        print(f"# sweep on {n} x {d}:")
        for line in lines:
            print(f"#   {line}")
        print(f"# fastest: fwd {fwd_cfg}, bwd {bwd_cfg} (used below)")
        P.FWD_BLOCK_ELEMENTS, P.FWD_NUM_WARPS = fwd_cfg["block_elements"], fwd_cfg["num_warps"]
        P.BWD_STEP_ELEMENTS, P.BWD_ROWS_PER_PROGRAM = bwd_cfg["step_elements"], bwd_cfg["rows_per_program"]
        P.BWD_NUM_WARPS, P.BWD_PREFETCH = bwd_cfg["num_warps"], bwd_cfg["prefetch"]
    print(
        f"# config: fwd block {P.FWD_BLOCK_ELEMENTS} warps {P.FWD_NUM_WARPS or 'auto'}; bwd step {P.BWD_STEP_ELEMENTS} "
        f"band {P.BWD_ROWS_PER_PROGRAM} warps {P.BWD_NUM_WARPS or 'auto'} stages {P.BWD_NUM_STAGES} "
        f"prefetch {P.BWD_PREFETCH}"
    )
    for n, d in sizes:
        rows = measure(P, n, d, dtype)
        item = dtype.itemsize
        print(f"\n{n} x {d} {dtype.name} ({n * d * item / 2**20:.0f} MiB per array)\n")
        copy_bw = rows[0][2]
        print(f"| computation | µs per call | TB/s | vs {rows[0][0].split(' (')[0]} |")
        print("|---|---|---|---|")
        for name, us, tbs in rows:
            print(f"| {name} | {us:.1f} | {tbs:.2f} | {tbs / copy_bw:.0%} |")


if __name__ == "__main__":
    main()
