"""Eager call overhead of a jaxops op, side by side with plain JAX and PyTorch.

Prints per-call times (best of several repetitions) and ratios:
  * for each call form (all positional, a default omitted, a keyword scalar, arrays by
    keyword, a ``list[Tensor]`` argument, an ``Optional`` array), the jaxops op against
    ``jax.jit(fn)`` called the same way (the target: op <= 1.3x jit for every form)
  * jaxops op called eagerly
  * ``jax.jit(fn)`` called eagerly (the target: op <= 1.3x this)
  * ``fn`` called directly (op-by-op JAX dispatch)
  * ``torch.library.custom_op`` eager call and the plain torch function, when torch is installed
  * a host (NumPy) op vs calling the NumPy function directly

Run: ``python bench/eager_overhead.py``
"""

from __future__ import annotations

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


def per_call_us(f: Callable[..., Any], *args: Any, n: int = 2000, reps: int = 9) -> float:
    """Per-call time of ``f(*args)`` in microseconds (see :func:`per_call_us_kw`)."""
    return per_call_us_kw(f, args, {}, n=n, reps=reps)


def per_call_us_kw(f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], n: int = 2000, reps: int = 9) -> float:
    """Per-call time of ``f(*args, **kwargs)`` in microseconds: the best of ``reps`` batches.

    The minimum (as :mod:`timeit` recommends) is what the call costs; noise from
    other work on the machine only ever adds to it.
    """
    for _ in range(50):
        f(*args, **kwargs)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            f(*args, **kwargs)
        times.append((time.perf_counter() - t0) / n * 1e6)
    return min(times)


def _call_forms() -> list[tuple[str, Any, Any, tuple[Any, ...], dict[str, Any]]]:
    """``(form, op, jitted, args, kwargs)``: each form called the same way on both sides."""

    def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
        return x + alpha * y

    def sum_list(xs: list[jax.Array], alpha: float = 1.0) -> jax.Array:
        return alpha * sum(xs)

    def maybe_add(x: jax.Array, b: jax.Array | None = None) -> jax.Array:
        return x if b is None else x + b

    op = jaxops.custom_op("bench::scale_add", scale_add, mutates_args=())
    op_list = jaxops.custom_op("bench::sum_list", sum_list, mutates_args=())
    op_opt = jaxops.custom_op("bench::maybe_add", maybe_add, mutates_args=())
    jitted = jax.jit(scale_add, static_argnames="alpha")
    jitted_list = jax.jit(sum_list, static_argnames="alpha")
    jitted_opt = jax.jit(maybe_add)
    x = jnp.ones(16)
    y = jnp.ones(16)
    return [
        ("all positional: f(x, y, 2.0)", op, jitted, (x, y, 2.0), {}),
        ("default omitted: f(x, y)", op, jitted, (x, y), {}),
        ("keyword scalar: f(x, y, alpha=2.0)", op, jitted, (x, y), {"alpha": 2.0}),
        ("arrays by keyword: f(x=x, y=y)", op, jitted, (), {"x": x, "y": y}),
        ("list[Tensor]: f([x, y], 2.0)", op_list, jitted_list, ([x, y], 2.0), {}),
        ("Optional array: f(x, b=y)", op_opt, jitted_opt, (x,), {"b": y}),
    ]


def main() -> None:
    forms = _call_forms()
    # Alternate short batches of the two sides so that machine noise hits both alike;
    # the best batch of each side is its cost.
    samples: dict[str, list[float]] = {}
    for name, op, jitted, args, kwargs in forms:
        for f in (op, jitted):
            per_call_us_kw(f, args, kwargs, n=200, reps=3)  # warm up (compiles)
        for _ in range(40):
            samples.setdefault(f"op {name}", []).append(per_call_us_kw(op, args, kwargs, n=200, reps=1))
            samples.setdefault(f"jit {name}", []).append(per_call_us_kw(jitted, args, kwargs, n=200, reps=1))
    form_rows = [(name, min(samples[f"op {name}"]), min(samples[f"jit {name}"])) for name, *_ in forms]

    x, y = forms[0][3][0], forms[0][3][1]

    def scale_add(a: jax.Array, b: jax.Array, alpha: float = 1.0) -> jax.Array:
        return a + alpha * b

    t_op = form_rows[0][1]
    t_jit = form_rows[0][2]
    t_direct = per_call_us(scale_add, x, y, 2.0, n=500)
    rows: list[tuple[str, float]] = [
        ("jaxops op, eager", t_op),
        ("jax.jit(fn), eager", t_jit),
        ("fn, op-by-op JAX", t_direct),
    ]

    @jaxops.custom_op("bench::hsin", mutates_args=(), host=True)
    def hsin(a: jax.Array) -> jax.Array:
        return np.sin(a)

    hsin.register_fake(lambda a: a)
    xn = np.ones(16, np.float32)
    t_host = per_call_us(hsin, x)
    t_np = per_call_us(np.sin, xn)
    t_cb = per_call_us(jax.jit(lambda a: jax.pure_callback(np.sin, jax.ShapeDtypeStruct(a.shape, a.dtype), a)), x, n=300)
    rows += [("host op, eager (direct kernel call)", t_host), ("np.sin alone", t_np), ("jit(pure_callback(np.sin))", t_cb)]

    torch_rows: list[tuple[str, float]] = []
    if torch is not None:
        @torch.library.custom_op("bench::scale_add", mutates_args=())
        def t_scale_add(a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
            return a + alpha * b

        ta, tb = torch.ones(16), torch.ones(16)
        torch_rows = [
            ("torch.library.custom_op, eager", per_call_us(t_scale_add, ta, tb, 2.0)),
            ("torch function, eager", per_call_us(lambda a, b, al: a + al * b, ta, tb, 2.0)),
        ]

    print(f"machine: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    width = max(len(r[0]) for r in form_rows) + 2
    print(f"{'call form (same form on both sides)':<{width}}{'op us':>9}{'jit us':>9}  op/jit (target <= 1.3x)")
    for name, t_o, t_j in form_rows:
        print(f"{name:<{width}}{t_o:9.2f}{t_j:9.2f}  {t_o / t_j:5.2f}x")
    print()
    width = max(len(r[0]) for r in rows + torch_rows) + 2
    for name, t in rows + torch_rows:
        print(f"{name:<{width}}{t:9.2f} us/call")
    print()
    print(f"ratio op / jax.jit(fn):            {t_op / t_jit:5.2f}x   (target <= 1.3x)")
    print(f"ratio op / fn op-by-op:            {t_op / t_direct:5.2f}x")
    print(f"ratio host op / jit(pure_callback): {t_host / t_cb:5.2f}x")
    if torch_rows:
        print(f"ratio op / torch custom_op:        {t_op / torch_rows[0][1]:5.2f}x")


if __name__ == "__main__":
    main()
