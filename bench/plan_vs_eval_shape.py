"""Benchmark: ``jaxops.plan`` vs ``jax.eval_shape`` on a 200-op model.

Run ``python bench/plan_vs_eval_shape.py``.  Same model, same abstract inputs
(symbolic batch ``b``), two regimes:

* first call: a function object never seen before (``jax.eval_shape`` retraces
  the whole model; ``jaxops.plan`` traces it once and walks the jaxpr);
* cached call: the same function object again (``jax.eval_shape`` hits JAX's
  own trace cache; ``jaxops.plan`` hits its plan cache).

The ops' own inner traces are warm in both regimes (JAX caches them per op and
signature; plan traces under its own mode, so each warms its own).  Medians of runs that
alternate the two, so machine load affects both alike.
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

N_OPS = 200


def build_model() -> Callable[..., Any]:
    """A 200-op model: traceable matmul/gelu/add ops and a host layer norm with a fake."""

    @jaxops.custom_op("bench::linear", mutates_args=())
    def linear(x: jax.Array, w: jax.Array) -> jax.Array:
        return x @ w

    @jaxops.custom_op("bench::gelu", mutates_args=())
    def gelu(x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x)

    @jaxops.custom_op("bench::add", mutates_args=())
    def add(x: jax.Array, y: jax.Array) -> jax.Array:
        return x + y

    @jaxops.custom_op("bench::norm", mutates_args=(), host=True)
    def norm(x: jax.Array) -> jax.Array:
        return (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-5)

    @norm.register_fake
    def _(x: Any) -> Any:
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    def model(params: list[jax.Array], x: jax.Array) -> jax.Array:
        # 4 op calls per block, 50 blocks = 200 op calls
        for w in params:
            h = norm(x)
            h = linear(h, w)
            h = gelu(h)
            x = add(x, h)
        return jnp.sum(x)

    return model


def interleaved_ms(a: Callable[[], Any], b: Callable[[], Any], repeat: int = 31) -> tuple[float, float]:
    """Median milliseconds of ``a`` and ``b``, run alternately (fair on a busy machine)."""
    ta, tb = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ta), 1e3 * statistics.median(tb)


def main() -> dict[str, float]:
    model = build_model()
    b, = jax.export.symbolic_shape("b")
    d = 64
    params = [jax.ShapeDtypeStruct((d, d), jnp.float32) for _ in range(N_OPS // 4)]
    x = jax.ShapeDtypeStruct((b, d), jnp.float32)

    p = jaxops.plan(model, params, x)  # warm the ops' own trace caches (plan keeps its own: fakes stand in)
    assert len(p.records) == N_OPS, len(p.records)
    jax.eval_shape(model, params, x)

    def fresh() -> Callable[..., Any]:
        return lambda ps, xs: model(ps, xs)  # a new function object: no cache can hit

    eval_first, plan_first = interleaved_ms(
        lambda: jax.eval_shape(fresh(), params, x), lambda: jaxops.plan(fresh(), params, x)
    )
    eval_cached, plan_cached = interleaved_ms(
        lambda: jax.eval_shape(model, params, x), lambda: jaxops.plan(model, params, x), repeat=201
    )
    print(f"op calls in the model      {len(p.records)}")
    print(f"first call  eval_shape     {eval_first:8.3f} ms")
    print(f"first call  plan           {plan_first:8.3f} ms   ratio {plan_first / eval_first:.2f}x")
    print(f"cached call eval_shape     {eval_cached:8.3f} ms")
    print(f"cached call plan           {plan_cached:8.3f} ms   ratio {plan_cached / eval_cached:.2f}x")
    print(f"total flops                {p.totals['flops']}")
    np.testing.assert_(plan_first < 1000.0)
    return {
        "eval_shape_first_ms": eval_first,
        "plan_first_ms": plan_first,
        "eval_shape_cached_ms": eval_cached,
        "plan_cached_ms": plan_cached,
    }


if __name__ == "__main__":
    main()
