"""Redefining an op N times: memory growth and what gets recompiled.

Each cycle redefines ``probe::scale`` (as re-running a notebook cell does) and
calls three jitted functions: ``uses_op`` (calls the op; must retrace and run
the new definition), ``unrelated`` (never traced the op; must not compile
again) and ``nested`` (reaches the op through another jitted function that was
traced before it).  Prints the RSS growth over the cycles and the compile
counts per function (``jaxops.compile_counter``).

Run: ``python bench/redefinition_probe.py [cycles]`` (default 1000).  Targets:
``unrelated`` compiles 0 times, ``uses_op`` and ``nested`` once per cycle, and
the RSS grows by < 50 MB in total.
"""

from __future__ import annotations

import gc
import os
import sys
import time

import jax
import jax.numpy as jnp

import jaxops


def _rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def _define(k: float) -> None:
    @jaxops.custom_op("probe::scale", mutates_args=())
    def scale(x: jax.Array) -> jax.Array:
        return x * k


def main(cycles: int = 1000) -> dict[str, float]:
    """Run the probe; returns the numbers it prints."""
    _define(0.0)

    @jax.jit
    def uses_op(v: jax.Array) -> jax.Array:
        return jaxops.ops.probe.scale(v) + 1

    @jax.jit
    def unrelated(v: jax.Array) -> jax.Array:
        return jnp.tanh(v) + 1

    @jax.jit
    def inner(v: jax.Array) -> jax.Array:
        return jaxops.ops.probe.scale(v)

    x = jnp.ones(16, jnp.float32)
    inner(x)  # traced (and cached) on its own first

    @jax.jit
    def nested(v: jax.Array) -> jax.Array:
        return inner(v) * 2

    for f in (uses_op, unrelated, nested):
        f(x).block_until_ready()
    warm = max(10, cycles // 20)  # settle allocator pools before the baseline
    for i in range(warm):
        _define(float(i))
        uses_op(x).block_until_ready()
        nested(x).block_until_ready()
    gc.collect()
    before = _rss_mb()
    wrong = 0
    t0 = time.perf_counter()
    with jaxops.compile_counter() as counter:
        for i in range(cycles):
            k = float(i + 1)
            _define(k)
            if float(uses_op(x)[0]) != k + 1 or float(nested(x)[0]) != 2 * k:
                wrong += 1
            unrelated(x).block_until_ready()
    elapsed = time.perf_counter() - t0
    gc.collect()
    after = _rss_mb()
    result = {
        "cycles": cycles,
        "rss_growth_mb": after - before,
        "rss_per_cycle_kb": (after - before) * 1e3 / cycles,
        "compiles_uses_op": counter.compiles["uses_op"],
        "compiles_nested": counter.compiles["nested"],
        "compiles_unrelated": counter.compiles["unrelated"],
        "stale_results": wrong,
        "ms_per_cycle": elapsed * 1e3 / cycles,
    }
    print(f"{cycles} redefinitions of probe::scale, each followed by a call of every function")
    print(f"  RSS: {before:.1f} MB -> {after:.1f} MB, growth {result['rss_growth_mb']:.1f} MB "
          f"({result['rss_per_cycle_kb']:.1f} kB/cycle; target < 50 MB in total)")
    print(f"  compiles: uses_op {result['compiles_uses_op']}, nested {result['compiles_nested']} "
          f"(target {cycles} each), unrelated {result['compiles_unrelated']} (target 0)")
    print(f"  results from a stale definition: {wrong} (target 0); {result['ms_per_cycle']:.1f} ms/cycle")
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
