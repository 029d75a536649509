"""Suite-wide device handling: the suite runs on whatever default device JAX has.

Tests run on JAX's default device (the GPU on a GPU machine, the CPU elsewhere) or
pin their arrays to an explicit device (:func:`on_cpu`). Two markers say where a
test can run at all:

* ``gpu``: needs a GPU; skipped when JAX sees none (so CI, which has no GPU, skips
  them cleanly instead of failing);
* ``cpu_only``: states a fact about the CPU backend itself (for instance XLA on
  the CPU rounds an f32 -> bf16 -> f32 round trip inside ``jit``, where the GPU may
  keep excess precision); skipped when the default backend is not the CPU.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import pytest


@functools.lru_cache(maxsize=1)
def has_gpu() -> bool:
    """Whether JAX sees at least one GPU."""
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def cpu_device() -> jax.Device:
    """The first CPU device (always present: JAX keeps a CPU backend beside a GPU)."""
    return jax.devices("cpu")[0]


def on_cpu(x: Any) -> Any:
    """``x`` (a pytree of arrays) committed to the CPU, whatever the default device is."""
    return jax.device_put(x, cpu_device())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests without a GPU and ``cpu_only`` tests off the CPU backend."""
    no_gpu = pytest.mark.skip(reason="needs a GPU (none visible to JAX)")
    not_cpu = pytest.mark.skip(
        reason=f"CPU-backend behaviour; the default backend here is {jax.default_backend()!r}"
    )
    gpu_here = has_gpu()
    cpu_default = jax.default_backend() == "cpu"
    for item in items:
        if "gpu" in item.keywords and not gpu_here:
            item.add_marker(no_gpu)
        if "cpu_only" in item.keywords and not cpu_default:
            item.add_marker(not_cpu)
