"""Run every benchmark in bench/ in turn (``python bench/run.py``; also ``nox -s bench``)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = [
    "eager_overhead.py",
    "vmap_host.py",
    "plan_vs_eval_shape.py",
    "ffi_ops.py",
    "opcheck_scaling.py",
    "redefinition_probe.py",
    "profile_limits_probe.py",
    "equinox_step.py",
]
#: Scripts that start their own JAX in a subprocess (the device count is fixed at JAX's start).
SUBPROCESS_SCRIPTS = ["sharded_step.py"]
#: sharded_step.py's arguments without several accelerators: 4 forced CPU devices, sizes whose
#: per-device host-callback operand stays at 64 KiB (larger ones deadlocked on CPU; see its docstring).
CPU_SHARDED_ARGS = ["--cpu-devices", "4", "--batch", "8", "--seq", "64", "--dim", "64", "--hidden", "2048"]


def _sharded_args() -> list[str]:
    """Every visible accelerator at full size when there are several; forced CPU devices otherwise."""
    import jax

    if jax.default_backend() != "cpu" and jax.device_count() > 1:
        return []
    return CPU_SHARDED_ARGS


def main() -> int:
    sys.path.insert(0, str(HERE.parent))
    for name in SCRIPTS + SUBPROCESS_SCRIPTS:
        path = HERE / name
        if not path.exists():
            print(f"== {name}: missing", flush=True)
            return 1
        print(f"== {name}", flush=True)
        if name in SUBPROCESS_SCRIPTS:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
            rc = subprocess.run([sys.executable, str(path), *_sharded_args()], env=env, check=False).returncode
            if rc:
                print(f"== {name}: exit status {rc}", flush=True)
                return rc
        else:
            runpy.run_path(str(path), run_name="__main__")
        print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
