"""Jitted Optax step of an Equinox model built from jaxops ops vs the same model in plain JAX.

``python bench/equinox_step.py`` prints the median step time of each, measured
side by side in one process (interleaved repetitions), and their ratio.  Two
variants: ``jax`` (traceable op with ``register_autograd`` + a
``custom_vjp.Function`` taking a module: target ≤ 1.02× the plain step) and
``host`` (adds a NumPy host op with a vmap rule: a ``pure_callback`` round trip
per step, which plain JAX does not pay).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples import equinox_model as em  # noqa: E402


def _median_us(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def run(batch: int = 512, d_hidden: int = 256, inner: int = 20, rounds: int = 15) -> None:
    x, y = em.make_data(jax.random.key(1), n=batch, d_in=64, n_out=16)
    optimizer = optax.adam(1e-3)
    step = em.make_step(optimizer)
    print(f"batch {batch}, d_in 64, hidden {d_hidden}, classes 16; median µs per jitted step")
    print(f"{'variant':<8}{'jaxops':>12}{'plain JAX':>12}{'ratio':>9}")
    for activation in ("jax", "host"):
        model = em.make_model(jax.random.key(0), d_in=64, d_hidden=d_hidden, n_out=16, activation=activation)
        plain = em.twin(model)
        states = {}
        for name, m in (("ops", model), ("plain", plain)):
            s = optimizer.init(eqx.filter(m, eqx.is_array))
            out = step(m, s, x, y)  # compile
            jax.block_until_ready(out)
            states[name] = (m, s)
        times: dict[str, list[float]] = {"ops": [], "plain": []}
        for _ in range(rounds):
            for name in ("ops", "plain"):
                m, s = states[name]

                def go(m=m, s=s):
                    r = None
                    for _ in range(inner):
                        r = step(m, s, x, y)
                    jax.block_until_ready(r)

                times[name] += [t / inner for t in _median_us(go, 1)]
        a, b = float(np.median(times["ops"])), float(np.median(times["plain"]))
        print(f"{activation:<8}{a:>12.1f}{b:>12.1f}{a / b:>8.3f}x")


if __name__ == "__main__":
    run()
