"""Run every benchmark in bench/ in turn (``python bench/run.py``; also ``nox -s bench``)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = [
    "eager_overhead.py",
    "vmap_host.py",
    "plan_vs_eval_shape.py",
    "redefinition_probe.py",
    "profile_limits_probe.py",
]


def main() -> int:
    sys.path.insert(0, str(HERE.parent))
    for name in SCRIPTS:
        path = HERE / name
        if not path.exists():
            print(f"== {name}: missing", flush=True)
            return 1
        print(f"== {name}", flush=True)
        runpy.run_path(str(path), run_name="__main__")
        print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
