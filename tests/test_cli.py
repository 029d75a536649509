"""The ``jaxops`` command line (``jaxops.cli``), run in-process through ``main``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxops import cli

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "examples" / "mlp_ops.py")
BROKEN = str(ROOT / "tests" / "cli_broken_ops.py")
FAST_CHECKS = "test_schema,test_faketensor"
MLP_SHAPES = [
    "--shape", "params.w1=16,32", "--shape", "params.b1=32",
    "--shape", "params.w2=32,4", "--shape", "params.b2=4",
    "--shape", "x=b,16", "--shape", "y=b:int32",
]


def run(argv: list[str]) -> tuple[int, list[str]]:
    out = io.StringIO()
    rc = cli.main(argv, out=out)
    return rc, out.getvalue().splitlines()


# ------------------------------------------------------------------------ list
def test_list_module_file() -> None:
    rc, lines = run(["list", MLP])
    assert rc == 0
    assert lines[0] == "mlp::linear(Tensor x, Tensor w, Tensor b) -> Tensor"
    assert lines[1:5] == [
        "    kernels   default: traceable",
        "    fake      derived (JAX traces the body)",
        "    autograd  derived (JAX differentiates the body)",
        "    vmap      derived (JAX batches the body)",
    ]
    i = lines.index("mlp::relu(Tensor x) -> Tensor")
    assert lines[i + 1] == "    kernels   default: host"
    assert lines[i + 2].startswith("    fake      registered (") and "mlp_ops.py:" in lines[i + 2]
    assert lines[i + 3].startswith("    autograd  registered (") and "mlp_ops.py:" in lines[i + 3]
    assert lines[i + 4] == "    vmap      registered (register_vmap rule)"
    j = lines.index("mlp::log_softmax(Tensor x) -> Tensor")
    assert lines[j + 2] == "    fake      derived (JAX traces the body)"
    assert lines[j + 3].startswith("    autograd  registered (")
    assert lines[-1] == "3 ops"


def test_list_dotted_module_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    rc, lines = run(["list", "tests.cli_broken_ops"])
    assert rc == 0
    names = [ln.split("(")[0] for ln in lines if not ln.startswith(" ")]
    assert names == ["clibroken::double", "clibroken::fine", "clibroken::nosamples", "3 ops"]


def test_list_host_op_without_fake() -> None:
    import jaxops

    @jaxops.custom_op("clilist::nofake", mutates_args=(), host=True)
    def nofake(x: jax.Array) -> jax.Array:
        return x

    d = cli.describe_op(nofake)
    assert d["fake"] == "missing (tracing this host op raises; add register_fake)"
    assert d["autograd"] == "none (a host op: the autograd fallback mode decides: warn/nothing/error)"
    assert d["vmap"] == "derived (one kernel call per example)"
    assert d["kernels"] == "default: host"


def test_list_missing_module(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run(["list", "no_such_module_jaxops_cli"])
    assert rc == 2
    assert lines == []
    assert "cannot import module 'no_such_module_jaxops_cli'" in capsys.readouterr().err


# ----------------------------------------------------------------------- check
def test_check_passing_module() -> None:
    rc, lines = run(["check", MLP, "--checks", FAST_CHECKS])
    assert rc == 0
    assert "PASS  mlp::relu         test_faketensor  (2 samples)" in lines
    assert "PASS  mlp::linear       test_schema  (1 sample)" in lines
    assert sum(ln.startswith("PASS") for ln in lines) == 6
    assert not any(ln.startswith(("FAIL", "SKIP")) for ln in lines)
    assert lines[-1] == "3 ops checked: 6 passed, 0 failed, 0 skipped"


def test_check_broken_module_fails(capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run(["check", BROKEN])
    assert rc == 1
    fails = [ln for ln in lines if ln.startswith("FAIL")]
    assert [ln.split()[2] for ln in fails] == ["test_faketensor", "test_aot_dispatch_dynamic", "test_vmap"]
    assert fails[0] == (
        "FAIL  clibroken::double     test_faketensor  (1/1 samples; sample 0): "
        "opcheck(clibroken::double) failed test_faketensor: "
        "output 0: Shapes (4,) (fake) and (3,) (real, from the kernel) are not equal"
    )
    k = lines.index(fails[0])
    assert lines[k + 1].startswith("      registration at fault: register_fake at ")
    assert "cli_broken_ops.py:" in lines[k + 1]
    assert lines[k + 2].startswith("      how to fix: ")
    assert "PASS  clibroken::double     test_gradcheck  (1 sample)" in lines
    assert "PASS  clibroken::fine       test_gradcheck  (1 sample)" in lines
    assert "SKIP  clibroken::nosamples  no sample inputs (jaxops.samples.register_sample_inputs)" in lines
    assert lines[-1] == "2 ops checked: 9 passed, 3 failed, 1 skipped"
    assert "jax.pure_callback failed" not in capsys.readouterr().err


def test_check_unknown_check_name(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = run(["check", MLP, "--checks", "test_bogus"])
    assert rc == 2
    assert "unknown check(s) ['test_bogus']" in capsys.readouterr().err


def test_check_module_without_samples(tmp_path: Path) -> None:
    mod = tmp_path / "clinosamples_mod.py"
    mod.write_text(
        "import jax\nimport jaxops\n\n"
        "@jaxops.custom_op('clinosamples::neg', mutates_args=())\n"
        "def neg(x: jax.Array) -> jax.Array:\n    return -x\n"
    )
    rc, lines = run(["check", str(mod)])
    assert rc == 1
    assert lines == [
        "SKIP  clinosamples::neg  no sample inputs (jaxops.samples.register_sample_inputs)",
        "0 ops checked: 0 passed, 0 failed, 1 skipped",
        "nothing was checked: no op of the module has sample inputs",
    ]


# ------------------------------------------------------------------------ plan
def test_plan_symbolic_batch() -> None:
    rc, lines = run(["plan", f"{MLP}:loss", *MLP_SHAPES])
    assert rc == 0
    assert lines[0] == f"plan of {MLP}:loss"
    header = lines[1].split()
    assert header == ["#", "op", "inputs", "outputs", "calls", "bytes", "flops", "phase", "scope"]
    rows = [ln.split() for ln in lines if ln.split() and ln.split()[0].isdigit()]
    assert [r[1] for r in rows] == ["mlp::linear", "mlp::relu", "mlp::linear", "mlp::log_softmax"]
    assert rows[0][2:6] == ["f32[b,16]", "f32[16,32]", "f32[32]", "f32[b,32]"]
    assert rows[2][2:6] == ["f32[b,32]", "f32[32,4]", "f32[4]", "f32[b,4]"]
    assert any(ln.split()[:1] == ["total"] for ln in lines)
    assert lines[-1].startswith("parameters 676; ")


def test_plan_grad_has_backward_records() -> None:
    rc, lines = run(["plan", f"{MLP}:loss", "--grad", *MLP_SHAPES])
    assert rc == 0
    assert lines[0] == f"plan of jax.grad({MLP}:loss)"
    ops = [ln.split()[1] for ln in lines if ln.split() and ln.split()[0].isdigit()]
    assert ops.count("mlp::linear") == 4
    assert ops.count("mlp::relu") == 2


def test_plan_shared_symbol_scope() -> None:
    values = cli.build_abstract_args(["x=b,4", "y=b,n:int8"])
    assert values["x"].shape[0] == values["y"].shape[0]
    assert str(values["y"].shape[1]) == "n"
    assert values["y"].dtype.name == "int8"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", f"{MLP}:loss", "--shape", "x=b,16"], "give a --shape (or --arg) for parameter(s) params, y"),
        (["plan", f"{MLP}:nope", *MLP_SHAPES], "has no attribute 'nope'"),
        (["plan", MLP, *MLP_SHAPES], "expected MODULE:FUNCTION"),
        (["plan", f"{MLP}:loss", *MLP_SHAPES, "--shape", "z=3"], "has no parameter(s) z"),
        (["plan", f"{MLP}:loss", "--shape", "x=b,16:floaty"], "unknown dtype 'floaty'"),
        (["plan", f"{MLP}:loss", "--shape", "x"], "expected NAME=DIMS[:DTYPE]"),
    ],
)
def test_plan_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = run(argv)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_parse_shape() -> None:
    assert cli.parse_shape("x=b,128:float32") == ("x", "b,128", "float32")
    assert cli.parse_shape("w=3") == ("w", "3", "float32")


# ------------------------------------------------------------------------ demo
class _FakeResult:
    def __init__(self, ok: bool) -> None:
        self.ok = ok


@pytest.mark.parametrize(("ok", "code"), [(True, 0), (False, 1)])
def test_demo_wiring(ok: bool, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from jaxops import demo

    seen: dict[str, object] = {}

    def fake_run(*, steps: int, progress: bool, out: object) -> _FakeResult:
        seen.update(steps=steps, progress=progress, out=out)
        return _FakeResult(ok)

    monkeypatch.setattr(demo, "run", fake_run)
    buf = io.StringIO()
    assert cli.main(["demo", "--steps", "7", "--no-progress"], out=buf) == code
    assert seen == {"steps": 7, "progress": False, "out": buf}


# ---------------------------------------------------------------------- parser
def test_no_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_python_dash_m_help() -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxops", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: jaxops ")
    for cmd in ("list", "check", "plan", "demo"):
        assert f"    {cmd} " in proc.stdout


EQX_MODULE = '''
import equinox as eqx
import jax
import jax.numpy as jnp


def make_model():
    return eqx.nn.MLP(4, 2, 8, depth=2, key=jax.random.PRNGKey(0))


model = make_model()


def loss(model, x):
    return jnp.sum(jax.vmap(model)(x))


def make_args():
    return eqx.filter_eval_shape(make_model), jax.ShapeDtypeStruct((16, 4), jnp.float32)


def make_x():
    return {"x": jax.ShapeDtypeStruct((4,), jnp.float32)}


def make_three():
    return 1, 2, 3


def make_broken():
    raise KeyError("no such checkpoint")
'''


@pytest.fixture()
def eqx_module(tmp_path: Path) -> str:
    pytest.importorskip("equinox")
    path = tmp_path / "cli_eqx_model.py"
    path.write_text(EQX_MODULE)
    return str(path)


def _scopes(lines: list[str]) -> list[str]:
    return [ln.split()[-1] for ln in lines if "(jax:" in ln and ln.split()[-1].startswith("eqx.")]


def test_plan_equinox_module_with_abstract_args(eqx_module: str) -> None:
    rc, lines = run(["plan", f"{eqx_module}:loss", "--abstract", f"{eqx_module}:make_args"])
    assert rc == 0, lines
    assert lines[0] == f"plan of {eqx_module}:loss"
    assert _scopes(lines).count("eqx.nn.MLP/eqx.nn.Linear") == 3  # one line per layer
    assert lines[-1].startswith(f"parameters {4 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2}; ")


def test_plan_grad_of_equinox_module_uses_filter_grad(eqx_module: str) -> None:
    rc, lines = run(["plan", f"{eqx_module}:loss", "--grad", "--abstract", f"{eqx_module}:make_args"])
    assert rc == 0, lines
    assert lines[0] == f"plan of eqx.filter_grad({eqx_module}:loss)"
    backward = [ln for ln in lines if "(jax:" in ln and "backward" in ln.split()]
    assert any(ln.split()[-1] == "eqx.nn.MLP/eqx.nn.Linear" for ln in backward)


def test_plan_module_instance_with_keyword_abstract_args(eqx_module: str) -> None:
    rc, lines = run(["plan", f"{eqx_module}:model", "--abstract", f"{eqx_module}:make_x"])
    assert rc == 0, lines
    assert _scopes(lines).count("eqx.nn.MLP/eqx.nn.Linear") == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--abstract", "{m}:make_x", "--shape", "x=4"], "parameter(s) x given both by --abstract and by --shape/--arg"),
        (["--abstract", "{m}:make_three"], "--abstract {m}:make_three returned 3 positional arguments, but {m}:model takes 1 (x)"),
        (["--abstract", "{m}:make_broken"], "--abstract {m}:make_broken: calling it raised KeyError: 'no such checkpoint'"),
        (["--abstract", "{m}:nothing"], "has no attribute 'nothing'"),
        (["--abstract", "make_x"], "--abstract 'make_x': expected MODULE:FUNCTION"),
    ],
)
def test_plan_abstract_errors(
    eqx_module: str, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _ = run(["plan", f"{eqx_module}:model", *[e.format(m=eqx_module) for e in extra]])
    assert rc == 2
    assert message.format(m=eqx_module) in capsys.readouterr().err
def test_help_says_that_modules_are_imported_and_cwd_comes_first(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["list", "--help"], ["check", "--help"], ["plan", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli.build_parser().parse_args(argv)
        assert e.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "IMPORT the modules and .py files they are given, which RUNS their code" in text
        assert "current directory first on sys.path" in text
