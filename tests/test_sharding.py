"""Ops inside sharded jit and shard_map; register_sharding (API.md §2)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import jaxops

SCRIPT = Path(__file__).parent / "scripts" / "sharding_check.py"


def test_sharded_jit_shard_map_and_rule_on_two_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SHARDING OK" in proc.stdout


def test_register_sharding_validation():
    @jaxops.custom_op("shard_v::f", mutates_args=())
    def f(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(ValueError, match="must look like 'b n, n m -> b m'"):
        f.register_sharding("b n")
    with pytest.raises(ValueError, match="bad factor"):
        f.register_sharding("b-1 -> b")
    with pytest.raises(TypeError, match="rule string or a callable"):
        f.register_sharding(3)

    @jaxops.custom_op("shard_v::h", mutates_args=(), host=True)
    def h(x: jax.Array) -> jax.Array:
        return x

    with pytest.raises(ValueError, match="needs traceable kernels"):
        h.register_sharding("b -> b")
