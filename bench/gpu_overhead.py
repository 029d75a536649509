"""Per-call costs of jaxops ops on a GPU, each beside its plain-JAX or PyTorch counterpart.

Everything is measured in one run on JAX's default device (run it on a GPU machine),
16-float arrays, median of repetitions (best of seven interleaved rounds):

* every eager call form of a traceable op against ``jax.jit(f)`` called the same way:
  all positional, a default left out, a keyword argument, a one-array op, an op with
  ``register_autograd`` (target: ≤ 1.1×);
* a host (NumPy) op on GPU arrays, eagerly and under ``jax.jit``, against
  ``torch.library.custom_op`` with a NumPy body on CUDA tensors
  (``x.cpu().numpy()`` → ``torch.from_numpy(...).cuda()``), eagerly and under
  ``torch.compile(backend="aot_eager")``, and against ``jax.jit(pure_callback)``;
* the transfers a host op pays: a device-to-host read of a fresh array and the ways to
  put a NumPy result back on the device.

Fresh input arrays are used wherever a device-to-host read is timed, since a
``jax.Array`` keeps its NumPy copy after the first read.

Run: ``python bench/gpu_overhead.py``
"""

from __future__ import annotations

import datetime
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxops

try:  # torch evaluates string annotations in this module's globals
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


#: Interleaved rounds per call form (the best of each side is kept): a GPU host's dispatch
#: cost drifts by several µs between seconds of one run, more than the op adds.
ROUNDS = 7


def per_call_us(f: Callable[..., Any], *args: Any, n: int = 2000, reps: int = 7, **kwargs: Any) -> float:
    """Median µs per call of ``f(*args, **kwargs)`` (dispatch cost: results are not awaited)."""
    for _ in range(50):
        f(*args, **kwargs)
    jax.block_until_ready(f(*args, **kwargs))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            f(*args, **kwargs)
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def per_call_fresh_us(f: Callable[[Any], Any], make_pool: Callable[[int], list[Any]], n: int = 300, reps: int = 5) -> float:
    """Median µs per call of ``f(a)`` over ``n`` distinct, never-read inputs per repetition."""
    for a in make_pool(20):
        f(a)
    times = []
    for _ in range(reps):
        pool = make_pool(n)
        jax.block_until_ready(pool)
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for a in pool:
            f(a)
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def best_of(rounds: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(rounds))


def transfer_candidates(dev: jax.Device) -> list[tuple[str, float]]:
    """Ways to move a small array between a GPU and NumPy, each timed on fresh arrays."""
    base = jnp.arange(16.0)
    cpu = jax.devices("cpu")[0]

    def pool(n: int) -> list[jax.Array]:
        rows = base[None, :] + jnp.arange(n, dtype=jnp.float32)[:, None]
        return [rows[i] for i in range(n)]

    def pool2(n: int) -> list[tuple[jax.Array, jax.Array]]:
        return list(zip(pool(n), pool(n)))

    def two_sequential(ab: tuple[jax.Array, jax.Array]) -> Any:
        return np.asarray(ab[0]), np.asarray(ab[1])

    def two_async(ab: tuple[jax.Array, jax.Array]) -> Any:
        for a in ab:
            a.copy_to_host_async()
        return np.asarray(ab[0]), np.asarray(ab[1])

    out: list[tuple[str, float]] = [
        ("D2H np.asarray", best_of(3, lambda: per_call_fresh_us(np.asarray, pool))),
        ("D2H jax.device_get", best_of(3, lambda: per_call_fresh_us(jax.device_get, pool))),
        ("D2H np.asarray(device_put(x, cpu))", best_of(3, lambda: per_call_fresh_us(lambda a: np.asarray(jax.device_put(a, cpu)), pool))),
        ("D2H x2 sequential np.asarray", best_of(3, lambda: per_call_fresh_us(two_sequential, pool2))),
        ("D2H x2 copy_to_host_async first", best_of(3, lambda: per_call_fresh_us(two_async, pool2))),
    ]
    try:
        pinned = jax.sharding.SingleDeviceSharding(dev, memory_kind="pinned_host")
        out.append(("D2H np.asarray(device_put(x, pinned_host))", best_of(3, lambda: per_call_fresh_us(lambda a: np.asarray(jax.device_put(a, pinned)), pool))))
    except Exception as e:  # noqa: BLE001 - a backend without pinned host memory
        print(f"# pinned_host: {type(e).__name__}: {e}")
    h = np.ones(16, np.float32)
    h2 = [np.ones(16, np.float32), np.zeros(16, np.float32)]
    out += [
        ("H2D jnp.asarray", best_of(3, lambda: per_call_us(lambda a: jax.block_until_ready(jnp.asarray(a)), h, n=500))),
        ("H2D jax.device_put(a, dev)", best_of(3, lambda: per_call_us(lambda a: jax.block_until_ready(jax.device_put(a, dev)), h, n=500))),
        ("H2D jax.device_put(a, dev), no wait", best_of(3, lambda: per_call_us(lambda a: jax.device_put(a, dev), h, n=500))),
        ("H2D x2 device_put each", best_of(3, lambda: per_call_us(lambda arrs: jax.block_until_ready([jax.device_put(a, dev) for a in arrs]), h2, n=500))),
        ("H2D x2 device_put(list)", best_of(3, lambda: per_call_us(lambda arrs: jax.block_until_ready(jax.device_put(arrs, dev)), h2, n=500))),
    ]
    return out


def main() -> None:
    dev = jax.devices()[0]
    if "--transfers" in sys.argv:
        print("| transfer (16 floats, fresh arrays) | µs |\n|---|---|")
        for name, t in transfer_candidates(dev):
            print(f"| {name} | {t:.1f} |")
        return
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {dev.device_kind} ({jax.default_backend()}), JAX {jax.__version__}")
    x = jnp.ones(16)
    y = jnp.ones(16)

    def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x + alpha * y

    op = jaxops.custom_op("bench_gpu::scale_add", scale_add, mutates_args=())
    jit_pos = jax.jit(scale_add, static_argnums=2)
    jit_kw = jax.jit(scale_add, static_argnames="alpha")

    @jaxops.custom_op("bench_gpu::sin", mutates_args=())
    def sin(a: jax.Array) -> jax.Array:
        return jnp.sin(a)

    @jaxops.custom_op("bench_gpu::sin_ag", mutates_args=())
    def sin_ag(a: jax.Array) -> jax.Array:
        return jnp.sin(a)

    sin_ag.register_autograd(
        lambda ctx, g: g * jnp.cos(ctx.saved_tensors[0]),
        setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]),
    )
    jit_sin = jax.jit(jnp.sin)

    forms: list[tuple[str, Callable[[], float], Callable[[], float]]] = [
        ("all positional: f(x, y, 2.0)", lambda: per_call_us(op, x, y, 2.0), lambda: per_call_us(jit_pos, x, y, 2.0)),
        ("default left out: f(x, y)", lambda: per_call_us(op, x, y), lambda: per_call_us(jit_pos, x, y)),
        ("keyword: f(x, y, alpha=2.0)", lambda: per_call_us(op, x, y, alpha=2.0), lambda: per_call_us(jit_kw, x, y, alpha=2.0)),
        ("one array: sin(x)", lambda: per_call_us(sin, x), lambda: per_call_us(jit_sin, x)),
        ("register_autograd: sin(x)", lambda: per_call_us(sin_ag, x), lambda: per_call_us(jit_sin, x)),
    ]
    print("\n| eager call form | jaxops op (µs) | `jax.jit(f)` (µs) | ratio |")
    print("|---|---|---|---|")
    for name, m_op, m_jit in forms:
        t_op, t_jit = [], []
        for _ in range(ROUNDS):  # interleave so that machine noise hits both alike
            t_op.append(m_op())
            t_jit.append(m_jit())
        print(f"| {name} | {min(t_op):.1f} | {min(t_jit):.1f} | **{min(t_op) / min(t_jit):.2f}×** |")

    # ---------------------------------------------------------------- host ops
    @jaxops.custom_op("bench_gpu::hsin", mutates_args=(), host=True)
    def hsin(a: jax.Array) -> jax.Array:
        return np.sin(a)

    hsin.register_fake(lambda a: a)

    @jaxops.custom_op("bench_gpu::hadd", mutates_args=(), host=True)
    def hadd(a: jax.Array, b: jax.Array) -> jax.Array:
        return np.add(a, b)

    hadd.register_fake(lambda a, b: a)

    base = jnp.arange(16.0)

    def pool(n: int) -> list[jax.Array]:
        rows = base[None, :] + jnp.arange(n, dtype=jnp.float32)[:, None]
        return [rows[i] for i in range(n)]  # each its own device buffer, never read

    def pool2(n: int) -> list[tuple[jax.Array, jax.Array]]:
        a, b = pool(n), pool(n)
        return list(zip(a, b))

    jit_hsin = jax.jit(hsin)
    cb = jax.jit(lambda a: jax.pure_callback(np.sin, jax.ShapeDtypeStruct(a.shape, a.dtype), a))
    host_rows: list[tuple[str, float]] = [
        ("jaxops host op, eager (fresh GPU array)", best_of(3, lambda: per_call_fresh_us(hsin, pool))),
        ("jaxops host op, 2 inputs, eager (fresh)", best_of(3, lambda: per_call_fresh_us(lambda ab: hadd(*ab), pool2))),
        ("jaxops host op under `jax.jit`", best_of(3, lambda: per_call_us(lambda a: jax.block_until_ready(jit_hsin(a)), x, n=300))),
        ("`jax.jit(pure_callback(np.sin))`", best_of(3, lambda: per_call_us(lambda a: jax.block_until_ready(cb(a)), x, n=300))),
        ("D2H: `np.asarray(fresh GPU array)`", best_of(3, lambda: per_call_fresh_us(np.asarray, pool))),
        ("H2D: `jnp.asarray(np array)`", best_of(3, lambda: per_call_us(lambda a: jax.block_until_ready(jnp.asarray(a)), np.ones(16, np.float32), n=500))),
        ("H2D: `jax.device_put(np array, gpu)`", best_of(3, lambda: per_call_us(lambda a: jax.block_until_ready(jax.device_put(a, dev)), np.ones(16, np.float32), n=500))),
    ]
    if torch is not None and torch.cuda.is_available():

        @torch.library.custom_op("bench_gpu::np_sin", mutates_args=())
        def t_np_sin(a: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.sin(a.cpu().numpy())).to(a.device)

        @t_np_sin.register_fake
        def _(a: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(a)

        compiled = torch.compile(lambda a: t_np_sin(a), backend="aot_eager")

        def tpool(n: int) -> list[Any]:
            return [torch.arange(16.0, device="cuda") + i for i in range(n)]

        host_rows += [
            ("torch custom_op (NumPy body), CUDA, eager", best_of(3, lambda: per_call_fresh_us(t_np_sin, tpool))),
            ("torch custom_op, `torch.compile(aot_eager)`", best_of(3, lambda: per_call_fresh_us(compiled, tpool))),
        ]
    print("\n| host op on GPU arrays (16 floats) | µs per call |")
    print("|---|---|")
    for name, t in host_rows:
        print(f"| {name} | {t:.1f} |")


if __name__ == "__main__":
    main()
