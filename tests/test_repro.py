"""opcheck tooling (API.md §7): ``generate_repro``, the repro hint of ``OpCheckError``,
``is_inside_opcheck`` and the JSON failures file of ``generate_opcheck_tests``.

Ports of PyTorch's test_generate_repro_save_data / _no_save_data,
test_failures_dict_validation and test_is_inside_opcheck_mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops.samples import register_sample_inputs, unregister_sample_inputs
from jaxops.testing import ACCEPT_ENV, generate_opcheck_tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@jaxops.custom_op("t_repro::mm", mutates_args=())
def mm(x: jax.Array, mat2: jax.Array, alpha: float = 1.0) -> jax.Array:
    return alpha * (x @ mat2)


@jaxops.custom_op("t_repro::bad_fake", mutates_args=(), host=True)
def bad_fake(x: jax.Array) -> jax.Array:
    return np.sin(x)


@bad_fake.register_fake
def _(x):
    return jax.ShapeDtypeStruct((x.shape[0] + 1,), x.dtype)  # wrong on purpose


BEGIN = "# " + "=" * 57 + "\n# BEGIN REPRO SCRIPT\n# " + "=" * 57 + "\n"
END = "# " + "=" * 57 + "\n# END REPRO SCRIPT\n# " + "=" * 57 + "\n"


# --------------------------------------------------------------------- generate_repro
def test_generate_repro_no_save_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = (jnp.ones((2, 2)),)
    kwargs = {"mat2": jnp.zeros((2, 2), jnp.int32), "alpha": 0.5}
    actual = jaxops.generate_repro("test_schema", mm, args, kwargs, save_data=False, dry_run=True)
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
    expected_body = """\
import jax
import jax.numpy as jnp
import numpy as np

import jaxops

# Make sure the module that defines t_repro::mm is imported before looking it up
import MODULE

op = jaxops.ops.t_repro.mm.default
args = (jnp.asarray([[1.0, 1.0], [1.0, 1.0]], dtype=jnp.float32),)
kwargs = {'mat2': jnp.asarray([[0, 0], [0, 0]], dtype=jnp.int32), 'alpha': 0.5}
jaxops.opcheck(op, args, kwargs, test_utils='test_schema')
""".replace("MODULE", __name__)
    assert actual == (
        "# repro_t_repro_mm_test_schema.py: re-runs opcheck's test_schema on t_repro::mm\n"
        + BEGIN
        + expected_body
        + END
    )


def test_generate_repro_script_reruns_the_check():
    text = jaxops.generate_repro("test_faketensor", bad_fake, (jnp.array([0.5, 1.5]),))
    assert text.startswith("# repro_t_repro_bad_fake_test_faketensor.py")
    scope: dict = {}
    with pytest.raises(jaxops.OpCheckError, match="test_faketensor") as info:
        exec(compile(_without_imports_of_tests(text), "<repro>", "exec"), scope)  # noqa: S102
    np.testing.assert_allclose(scope["args"][0], [0.5, 1.5])
    assert "register_fake at" in info.value.registration
    # the same inputs through a check that passes: the script runs to the end
    text = jaxops.generate_repro("test_schema", bad_fake, scope["args"])
    scope = {}
    exec(compile(_without_imports_of_tests(text), "<repro>", "exec"), scope)  # noqa: S102


def _without_imports_of_tests(text: str) -> str:
    """This test module defines the ops; in-process the script needs no import of it."""
    return "\n".join(ln for ln in text.splitlines() if ln != f"import {__name__}")


def test_generate_repro_values_roundtrip():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2)), jnp.float32)
    y = jnp.asarray([[1.5], [2.25]], jnp.bfloat16)
    text = jaxops.generate_repro("test_vmap", mm, (x, y), {"alpha": 2})
    scope: dict = {}
    src = _without_imports_of_tests(text).replace("jaxops.opcheck(", "result = jaxops.opcheck(")
    exec(compile(src, "<repro>", "exec"), scope)  # noqa: S102
    a, b = scope["args"]
    assert a.dtype == jnp.float32 and b.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a), np.asarray(x))  # exact, not rounded
    np.testing.assert_array_equal(np.asarray(b, np.float32), np.asarray(y, np.float32))
    assert scope["kwargs"] == {"alpha": 2}
    assert scope["result"] == {"test_vmap": "SUCCESS"}


def test_generate_repro_large_array_placeholder():
    big = jnp.ones((50, 50))
    text = jaxops.generate_repro("test_vmap", mm, (big, big))
    assert "jnp.zeros((50, 50), dtype=jnp.float32)" in text
    assert "# NOTE:" in text and "save_data=True" in text


def test_generate_repro_save_data_dry_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = jaxops.generate_repro(
        "test_schema", mm, (jnp.ones((2, 2)),), {"mat2": jnp.zeros((2, 2))}, save_data=True, dry_run=True
    )
    assert list(tmp_path.iterdir()) == []
    assert 'data = np.load(pathlib.Path(__file__).with_name("repro_t_repro_mm_test_schema.npz"))' in text
    assert 'args = (jnp.asarray(data["a0"]),)' in text
    assert "kwargs = {'mat2': jnp.asarray(data[\"a1\"])}" in text


def test_generate_repro_save_data_writes_and_runs(tmp_path, monkeypatch):
    module = tmp_path / "repro_ops_mod.py"
    module.write_text(
        textwrap.dedent(
            """
            import jax, numpy as np, jaxops

            @jaxops.custom_op("t_repro_mod::shift", mutates_args=(), host=True)
            def shift(x: jax.Array) -> jax.Array:
                return x + 1

            @shift.register_fake
            def _(x):
                return jax.ShapeDtypeStruct(x.shape, np.float16)  # wrong dtype on purpose
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import repro_ops_mod

    monkeypatch.chdir(tmp_path)
    x = jnp.asarray(np.linspace(0, 1, 2000), jnp.float32)  # too large to inline
    text = jaxops.generate_repro("test_faketensor", repro_ops_mod.shift, (x,), save_data=True, dry_run=False)
    script = tmp_path / "repro_t_repro_mod_shift_test_faketensor.py"
    data = tmp_path / "repro_t_repro_mod_shift_test_faketensor.npz"
    assert text.splitlines()[0] == f"# written to {script} and {data}"
    assert script.read_text() == text.split("\n", 1)[1]
    np.testing.assert_array_equal(np.load(data)["a0"], np.asarray(x))
    assert "import repro_ops_mod" in text
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]), JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [sys.executable, str(script)], cwd=str(tmp_path.parent), env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode != 0
    assert "OpCheckError" in run.stderr and "Dtypes float16 (fake) and float32" in run.stderr


def test_generate_repro_errors():
    with pytest.raises(ValueError, match="unknown check 'test_nope'"):
        jaxops.generate_repro("test_nope", mm, (jnp.ones((2, 2)), jnp.ones((2, 2))))
    with pytest.raises(TypeError, match=r"generate_repro\(t_repro::mm\): args must be a tuple"):
        jaxops.generate_repro("test_schema", mm, jnp.ones((2, 2)))


def test_opcheck_error_ends_with_repro_hint():
    with pytest.raises(jaxops.OpCheckError) as info:
        jaxops.opcheck(bad_fake, (jnp.ones(3),), test_utils="test_faketensor")
    last = str(info.value).splitlines()[-1]
    assert "jaxops.generate_repro('test_faketensor', 't_repro::bad_fake', args, kwargs" in last


# ------------------------------------------------------------------ is_inside_opcheck
def test_is_inside_opcheck():
    seen: list[bool] = []

    @jaxops.custom_op("t_repro::spy", mutates_args=(), host=True)
    def spy(x: jax.Array) -> jax.Array:
        seen.append(jaxops.is_inside_opcheck())
        return x * 2

    spy.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    assert not jaxops.is_inside_opcheck()
    spy(jnp.ones(2))
    assert seen == [False]
    seen.clear()
    jaxops.opcheck(spy, (jnp.ones(2),), test_utils=["test_schema", "test_faketensor"])
    assert seen and all(seen)
    assert not jaxops.is_inside_opcheck()
    # also False after a failing check
    with pytest.raises(jaxops.OpCheckError):
        jaxops.opcheck(bad_fake, (jnp.ones(3),), test_utils="test_faketensor")
    assert not jaxops.is_inside_opcheck()


# --------------------------------------------------------------------- failures file
@pytest.fixture
def samples():
    register_sample_inputs(mm, lambda: [((jnp.ones((2, 2)), jnp.ones((2, 2))), {})])
    register_sample_inputs(bad_fake, lambda: [((jnp.ones(3),), {})])
    yield
    unregister_sample_inputs(mm)
    unregister_sample_inputs(bad_fake)


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_failures_dict_validation(tmp_path, samples):
    path = tmp_path / "failures.json"
    _write(path, {"t_repro::bad_fake": {"test_faketensor": {"comment": "", "status": "success"}}})
    with pytest.raises(RuntimeError, match="got status=success"):
        generate_opcheck_tests({}, "t_repro", failures_dict_path=path)
    _write(path, {"t_repro::bad_fake": {"test_aot_dispatch": {"comment": "", "status": "xfail"}}})
    with pytest.raises(RuntimeError, match="should begin with one of"):
        generate_opcheck_tests({}, "t_repro", failures_dict_path=path)
    _write(path, {"t_repro::nopenopenope": {"test_vmap": {"comment": "", "status": "xfail"}}})
    with pytest.raises(RuntimeError, match="does not exist"):
        generate_opcheck_tests({}, "t_repro", failures_dict_path=path)
    path.write_text("{not json")
    with pytest.raises(RuntimeError, match="not valid JSON"):
        generate_opcheck_tests({}, "t_repro", failures_dict_path=path)


def _marks(test, op_name):
    (param_mark,) = [m for m in test.pytestmark if m.name == "parametrize"]
    (param,) = [p for p in param_mark.args[1] if p.id == op_name]
    return {m.name: m.kwargs for m in param.marks}


def test_failures_file_marks(tmp_path, samples):
    path = _write(
        tmp_path / "failures.json",
        {
            "t_repro::bad_fake": {"test_faketensor": {"comment": "fake is off by one", "status": "xfail"}},
            "t_repro::mm": {"test_gradcheck": {"comment": "too slow", "status": "skip"}},
        },
    )
    g: dict = {}
    names = generate_opcheck_tests(
        g, "t_repro", failures_dict_path=path, test_utils=["test_faketensor", "test_gradcheck"]
    )
    assert names == ["test_opcheck_faketensor", "test_opcheck_gradcheck"]
    fake_marks = _marks(g["test_opcheck_faketensor"], "t_repro::bad_fake")
    assert fake_marks["xfail"]["reason"] == "fake is off by one" and fake_marks["xfail"]["strict"]
    assert _marks(g["test_opcheck_faketensor"], "t_repro::mm") == {}
    assert _marks(g["test_opcheck_gradcheck"], "t_repro::mm")["skip"]["reason"] == "too slow"
    # the generated test really fails for the listed case (so the strict xfail holds)
    with pytest.raises(jaxops.OpCheckError):
        g["test_opcheck_faketensor"](op_name="t_repro::bad_fake")
    g["test_opcheck_faketensor"](op_name="t_repro::mm")


def test_failures_file_accept_mode_regenerates(tmp_path, samples, monkeypatch):
    path = _write(
        tmp_path / "failures.json",
        {
            # stale: mm passes test_vmap, so accept mode removes the entry
            "t_repro::mm": {
                "test_vmap": {"comment": "was broken", "status": "xfail"},
                "test_gradcheck": {"comment": "too slow", "status": "skip"},
            },
            "t_repro::bad_fake": {"test_faketensor": {"comment": "off by one", "status": "xfail"}},
        },
    )
    monkeypatch.setenv(ACCEPT_ENV, "1")
    g: dict = {}
    generate_opcheck_tests(g, "t_repro", failures_dict_path=path, test_utils=["test_faketensor", "test_vmap"])
    # accept mode: no xfail marks, every case runs and records its outcome
    assert _marks(g["test_opcheck_faketensor"], "t_repro::bad_fake") == {}
    for test in ("test_opcheck_faketensor", "test_opcheck_vmap"):
        for op_name in ("t_repro::bad_fake", "t_repro::mm"):
            g[test](op_name=op_name)
    assert json.loads(path.read_text()) == {
        "t_repro::bad_fake": {
            "test_faketensor": {"comment": "off by one", "status": "xfail"},
            "test_vmap": {"comment": "", "status": "xfail"},  # new failure found by the run
        },
        "t_repro::mm": {"test_gradcheck": {"comment": "too slow", "status": "skip"}},
    }
    # without the variable the regenerated file is used as-is
    monkeypatch.delenv(ACCEPT_ENV)
    g = {}
    generate_opcheck_tests(g, "t_repro", failures_dict_path=path, test_utils=["test_vmap"])
    assert "xfail" in _marks(g["test_opcheck_vmap"], "t_repro::bad_fake")
