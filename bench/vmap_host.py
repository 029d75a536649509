"""vmap of a host (NumPy) op at batch 64: a ``register_vmap`` rule vs the per-example fallback.

Two ops with the same NumPy body (a small per-row softmax-weighted sum, the kind
of kernel one writes in NumPy):

* ``bench_vmap::fallback``: no rule, so ``jax.vmap`` calls the kernel once per
  example (``vmap_method="sequential"``, the default);
* ``bench_vmap::ruled``: a ``register_vmap`` rule that calls the kernel once on
  the whole batch.

Both are timed under ``jax.jit(jax.vmap(op))`` (compiled once, then called), and
under ``jax.jit(jax.vmap(jax.grad(...)))`` with a registered backward.
Prints the median per-call time of several repetitions and the ratio.

Run: ``python bench/vmap_host.py``
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxops

BATCH = 64
N = 256


def _kernel(x: np.ndarray) -> np.ndarray:
    # softmax over the last axis, then the weighted sum: works for any leading (batch) dims
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    w = e / e.sum(axis=-1, keepdims=True)
    return (w * x).sum(axis=-1)


def _make(name: str, with_rule: bool) -> Any:
    @jaxops.custom_op(f"bench_vmap::{name}", mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        return _kernel(x)

    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape[:-1], x.dtype))

    def setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0], output)

    def backward(ctx: Any, g: jax.Array) -> jax.Array:
        x, y = ctx.saved_tensors
        w = jax.nn.softmax(x, axis=-1)
        return g[..., None] * w * (1 + x - y[..., None])

    op.register_autograd(backward, setup_context=setup)
    if with_rule:

        @op.register_vmap
        def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array) -> Any:
            return op(jnp.moveaxis(x, in_dims[0], 0)), 0

    return op


def median_us(f: Callable[..., Any], *args: Any, n: int = 20, reps: int = 7) -> float:
    """Median over ``reps`` repetitions of the mean per-call time of ``n`` calls (µs)."""
    jax.block_until_ready(f(*args))  # compile
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            jax.block_until_ready(f(*args))
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    fallback = _make("fallback", with_rule=False)
    ruled = _make("ruled", with_rule=True)
    x = jax.random.normal(jax.random.key(0), (BATCH, N), jnp.float32)
    np.testing.assert_allclose(jax.vmap(fallback)(x), jax.vmap(ruled)(x), rtol=1e-5)

    rows = []
    for label, wrap in [
        ("jit(vmap(op))", lambda op: jax.jit(jax.vmap(op))),
        ("jit(vmap(grad(op)))", lambda op: jax.jit(jax.vmap(jax.grad(lambda r: op(r))))),
    ]:
        t_fallback = median_us(wrap(fallback), x)
        t_rule = median_us(wrap(ruled), x)
        rows.append((label, t_fallback, t_rule))

    print(f"vmap of a host op, batch {BATCH}, rows of {N} floats (median per call)")
    print(f"{'':22s} {'per-example':>14s} {'register_vmap':>14s} {'ratio':>8s}")
    for label, t_fallback, t_rule in rows:
        print(f"{label:22s} {t_fallback:11.1f} us {t_rule:11.1f} us {t_fallback / t_rule:7.1f}x")


if __name__ == "__main__":
    main()
