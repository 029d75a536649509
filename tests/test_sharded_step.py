"""bench/sharded_step.py on 4 forced CPU devices (a 2 x 2 data x model mesh), issue 14.

The script runs in a subprocess because the device count must be set before JAX starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "sharded_step.py"


def _load_script_module():
    spec = importlib.util.spec_from_file_location("sharded_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)  # the script sets the forced device count itself
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--cpu-devices", "4", "--steps", "20", "--timing-steps", "3",
         "--row-rule"],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    out = json.loads(lines[-1][len("RESULT "):])
    out["_returncode"] = proc.returncode
    out["_stdout"] = proc.stdout
    return out


def test_runs_on_a_2x2_mesh_of_forced_cpu_devices(result):
    assert result["devices"] == 4 and result["platform"] == "cpu"
    assert result["mesh"] == {"data": 2, "model": 2}
    assert result["_returncode"] == 0, result["_stdout"]
    for line in ("time ratio jaxops/plain:", "all-gathers jaxops adds over plain JAX: 0", "losses equal: True"):
        assert line in result["_stdout"]


def test_losses_of_twenty_steps_equal_plain_jax(result):
    jx, plain = result["jaxops_step"]["losses"], result["plain_step"]["losses"]
    assert len(jx) == len(plain) == 20
    assert result["losses_equal"] is True
    for a, b in zip(jx, plain):
        assert a == pytest.approx(b, rel=1e-5)
    assert jx[-1] < jx[0]  # it trains: the update is applied


def test_no_extra_all_gather_and_the_rules_are_used(result):
    jx, plain = result["jaxops_step"], result["plain_step"]
    assert jx["collectives"]["all-gather"] <= plain["collectives"]["all-gather"]
    assert result["extra_all_gathers"] <= 0
    # a training step on a 2 x 2 mesh reduces across devices: the counts are not trivially 0
    assert plain["collectives"]["all-reduce"] >= 1
    assert jx["partitioned_calls"] >= 1  # the register_sharding rule partitions the forward matmul
    assert plain["partitioned_calls"] == 0
    assert result["vmap_rule_used"] is True


def test_the_all_gather_count_sees_a_rule_that_gathers(result):
    """Negative control: a row-parallel matmul whose rule replicates its contracted, sharded factor
    gathers where plain JAX all-reduces, and the count shows it (so the check above can fail)."""
    row = result["row_rule_step"]
    assert result["row_rule_extra_all_gathers"] >= 1
    assert row["collectives"]["all-gather"] > result["plain_step"]["collectives"]["all-gather"]
    assert row["partitioned_calls"] > result["jaxops_step"]["partitioned_calls"]
    assert row["losses"] == pytest.approx(result["plain_step"]["losses"], rel=1e-5)  # same values


def test_step_compiled_once(result):
    assert result["jaxops_step"]["compiles"] == 1
    assert result["jaxops_step"]["traces"] == 1
    assert result["plain_step"]["compiles"] == 1
    assert result["jaxops_step"]["step_ms"] > 0 and result["time_ratio"] > 0


def test_count_collectives_counts_async_pairs_once_and_ignores_other_ops():
    count = _load_script_module().count_collectives
    hlo = "\n".join([
        "  %ag = f32[8]{0} all-gather-start(f32[4]{0} %p), dimensions={0}",
        "  %agd = f32[8]{0} all-gather-done(%ag)",
        "  %ar = f32[4]{0} all-reduce(f32[4]{0} %p), to_apply=%add",
        "  %rs = f32[2]{0} reduce-scatter(f32[4]{0} %p), dimensions={0}",
        "  %cp = f32[4]{0} collective-permute(f32[4]{0} %p), source_target_pairs={{0,1}}",
        "  %a2a = f32[4]{0} all-to-all(f32[4]{0} %p), dimensions={0}",
        "  %r = f32[4]{0} reduce(f32[4]{0} %p), to_apply=%all-reduce-like-name",
    ])
    assert count(hlo) == {"all-gather": 1, "all-reduce": 1, "reduce-scatter": 1, "all-to-all": 1,
                          "collective-permute": 1}
