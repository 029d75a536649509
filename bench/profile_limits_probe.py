"""Hostile profile files: how fast ``load_op_profiles`` rejects them, and at what memory cost.

Each case is built here (nothing is downloaded), written to a temporary file and
loaded once; the probe prints the exception, the wall time and the peak Python
memory (``tracemalloc``, which also slows Python code down several times).
Before the limits (issue 16.2) a ~700-byte "billion laughs" file took 5 s and
788 MB, an 8-level alias bomb of ints 24 s and 1.5 GB, a 50 MB file 338 s and
6.5 GB.  Targets: every hostile case raises ``ValueError`` in well under a second.

Run: ``python bench/profile_limits_probe.py``.
"""

from __future__ import annotations

import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable

import jaxops
from jaxops import profiles

HEAD = f"version: {jaxops.__version__}\nformat: 1\n"


def _laughs(leaf: str, levels: int, fan: int = 10) -> str:
    lines = [f"  l0: &l0 [{', '.join([leaf] * fan)}]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]")
    return HEAD + "junk:\n" + "\n".join(lines) + "\n"


def _valid(n_profiles: int) -> str:
    entry = (
        "  - args_profile: [{tensor: {rank: 2, dtype: float32, device: cpu}}, {value: 1.5}]\n"
        "    out_profile: {rank: 2, dtype: float32, device: cpu}\n"
        "    dims: [[[[arg, 0, -1, 0]], [[arg, 0, -1, 1]]]]\n"
    )
    return HEAD + "operators:\n" + "".join(f"  ns::op{i}:\n{entry}" for i in range(n_profiles))


CASES: dict[str, Callable[[], str]] = {
    "billion laughs (9 levels of 10 strings)": lambda: _laughs("lol", 9),
    "alias bomb of ints (8 levels)": lambda: _laughs("1", 8),
    "recursive alias": lambda: HEAD + "operators: &a {x: *a}\n",
    "nesting 100,000 deep": lambda: HEAD + "junk: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "rank 1,000,000,000": lambda: HEAD + "operators:\n  ns::op:\n  - args_profile: []\n"
    "    out_profile: {rank: 1000000000, dtype: float32}\n",
    "file over MAX_FILE_BYTES (50 MB)": lambda: HEAD + "#" * 50_000_000 + "\n",
    "valid file, 2,000 profiles": lambda: _valid(2_000),
}


def main() -> None:
    """Load every case once and print what happened."""
    print(f"limits: MAX_FILE_BYTES={profiles.MAX_FILE_BYTES} MAX_NODES={profiles.MAX_NODES} "
          f"MAX_ALIASES={profiles.MAX_ALIASES} MAX_DEPTH={profiles.MAX_DEPTH} MAX_RANK={profiles.MAX_RANK}")
    jaxops.load_op_profiles(__import__("io").StringIO(HEAD))  # imports and the loader class, once
    for name, build in CASES.items():
        text = build()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            fh.write(text)  # loaded from a path, as a user would
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            loaded = jaxops.load_op_profiles(fh.name)
            outcome = f"loaded {sum(len(v) for v in loaded.values())} profiles"
        except (ValueError, RuntimeError) as e:
            outcome = f"{type(e).__name__} ({len(str(e))} chars): {str(e)[:90]}"
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        os.unlink(fh.name)
        print(f"- {name} [{len(text):,} bytes]: {elapsed * 1e3:.1f} ms, peak {peak / 1e6:.1f} MB; {outcome}")


if __name__ == "__main__":
    main()
