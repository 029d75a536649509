"""Op profiles: record, save/load (safe, versioned), serve as fakes, MissingOpProfile."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops import MissingOpProfile, OpProfile, TensorMetadata

S = jax.ShapeDtypeStruct
F32 = np.dtype("float32")


def _define(real: bool = True):
    """The same two host ops, with kernels (real=True) or with kernels that cannot run."""

    @jaxops.custom_op("proftest::mm", mutates_args=(), host=True)
    def mm(a: jax.Array, b: jax.Array) -> jax.Array:
        if not real:
            raise RuntimeError("proftest::mm kernel is not installed on this machine")
        return a @ b

    @jaxops.custom_op("proftest::relu", mutates_args=(), host=True)
    def relu(x: jax.Array, floor: float = 0.0) -> jax.Array:
        if not real:
            raise RuntimeError("proftest::relu kernel is not installed on this machine")
        return np.maximum(x, floor)

    return mm, relu


def _model(w, x):
    return jnp.sum(jaxops.ops.proftest.relu(jaxops.ops.proftest.mm(x, w)))


def test_metadata_and_profiles_are_hashable_values():
    a = TensorMetadata(2, "float32", "cpu")
    assert a == TensorMetadata(2, jnp.float32, "cpu") and a.dtype == F32
    assert hash(a) == hash(TensorMetadata(2, np.float32, "cpu"))
    p = OpProfile((a, 1.0), a)
    q = OpProfile((a, 1.0), a, dims=((("const", 3),),) * 1)
    assert p == q and {p, q} == {p}  # hints do not take part in identity
    assert OpProfile([a], [a, a]).out_profile == (a, a)
    with pytest.raises(ValueError, match="rank must be a non-negative int"):
        TensorMetadata(-1, "float32", "cpu")
    with pytest.raises(TypeError, match="out_profile must be a TensorMetadata"):
        OpProfile((a,), 3)


def test_record_eager_and_traced_calls():
    mm, relu = _define()

    @jaxops.custom_op("proftest::shift", mutates_args=())
    def shift(x: jax.Array, by: float) -> jax.Array:
        return x + by

    with jaxops.record_op_profiles() as profiles:
        mm(np.ones((2, 4), np.float32), np.ones((4, 3), np.float32))
        jax.jit(lambda x: shift(x, 0.5))(jnp.ones((3,), jnp.float32))
    dev = jax.default_backend()  # NumPy inputs and traced calls land on the default device
    t2 = TensorMetadata(2, F32, dev)
    assert profiles["proftest::mm"] == {OpProfile((t2, t2), t2)}
    (rp,) = profiles["proftest::shift"]
    assert rp.args_profile == (TensorMetadata(1, F32, dev), 0.5)
    assert rp.out_profile == TensorMetadata(1, F32, dev)
    assert jaxops.profile_fakes._RECORDING is False
    mm(np.ones((2, 4), np.float32), np.ones((4, 3), np.float32))  # outside: nothing recorded
    assert len(profiles["proftest::mm"]) == 1


def test_save_load_round_trip_path_text_and_binary(tmp_path):
    mm, relu = _define()
    with jaxops.record_op_profiles() as profiles:
        relu(mm(np.ones((2, 4), np.float32), np.ones((4, 3), np.float32)))
    path = tmp_path / "profiles.yaml"
    jaxops.save_op_profiles(profiles, path)
    text = path.read_text()
    assert f"version: {jaxops.__version__}" in text and "!!python" not in text
    assert jaxops.load_op_profiles(path) == profiles
    assert jaxops.load_op_profiles(str(path)) == profiles
    sbuf = io.StringIO()
    jaxops.save_op_profiles(profiles, sbuf)
    sbuf.seek(0)
    assert jaxops.load_op_profiles(sbuf) == profiles
    bbuf = io.BytesIO()
    jaxops.save_op_profiles(profiles, bbuf)
    bbuf.seek(0)
    loaded = jaxops.load_op_profiles(bbuf)
    assert loaded == profiles
    (p,) = loaded["proftest::mm"]
    assert p.dims is not None  # dimension hints survive the round trip


def test_python_object_tags_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = (
        f"version: {jaxops.__version__}\nformat: 1\n"
        f"operators: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(ValueError, match="Python object tags are refused"):
        jaxops.load_op_profiles(io.StringIO(evil))
    assert not marker.exists()
    with pytest.raises(ValueError, match="expected a mapping at top level"):
        jaxops.load_op_profiles(io.StringIO("- 1\n- 2\n"))


@pytest.mark.parametrize(
    "text",
    [
        "version: 99.0.0\nformat: 1\noperators: {}\n",
        "format: 1\noperators: {}\n",
        "version: VERSION\nformat: 7\noperators: {}\n",
        "version: VERSION\noperators: {}\n",
    ],
)
def test_incompatible_versions_raise_outdated(text):
    with pytest.raises(RuntimeError, match="Unable to load outdated profile"):
        jaxops.load_op_profiles(io.StringIO(text.replace("VERSION", jaxops.__version__)))


def test_unsafe_generate_fake_kernels_overrides_registered_fake_and_restores():
    @jaxops.custom_op("proftest::wrongfake", mutates_args=(), host=True)
    def op(x: jax.Array) -> jax.Array:
        return x.sum(0)

    with jaxops.record_op_profiles() as profiles:  # recorded before the (wrong) fake exists
        op(np.ones((4, 3), np.float32))

    @op.register_fake
    def _(x):
        return S((99,), x.dtype)

    assert jax.eval_shape(op, S((4, 3), jnp.float32)).shape == (99,)
    with jaxops.unsafe_generate_fake_kernels(profiles):
        assert jax.eval_shape(op, S((4, 3), jnp.float32)).shape == (3,)  # from the dimension hints
    assert jax.eval_shape(op, S((4, 3), jnp.float32)).shape == (99,)
    assert jaxops.profile_fakes._ACTIVE.get() is None and jaxops.profile_fakes._RECORDING is False


def test_missing_profile_names_the_op():
    mm, relu = _define()
    t2 = TensorMetadata(2, F32, "cpu")
    profiles = {"proftest::mm": {OpProfile((t2, t2), t2)}}
    assert issubclass(MissingOpProfile, RuntimeError)
    with jaxops.unsafe_generate_fake_kernels(profiles):
        with pytest.raises(MissingOpProfile, match=r"proftest::mm: no op profile matches the call's arguments \(rank 1 float32"):
            jax.eval_shape(mm, S((3,), jnp.float32), S((3, 2), jnp.float32))
        with pytest.raises(MissingOpProfile, match="proftest::mm"):
            jax.eval_shape(mm, S((3, 3), jnp.float16), S((3, 2), jnp.float16))
    relu_profiles = {"proftest::relu": {OpProfile((TensorMetadata(1, F32, "cpu"), 0.0), TensorMetadata(1, F32, "cpu"))}}
    with jaxops.unsafe_generate_fake_kernels(relu_profiles):
        assert jax.eval_shape(relu, S((5,), jnp.float32)).shape == (5,)
        with pytest.raises(MissingOpProfile, match=r"proftest::relu: .*\(rank 1 float32, 2\.0\)"):
            jax.eval_shape(lambda x: relu(x, 2.0), S((5,), jnp.float32))


def test_traceable_op_in_served_profiles_is_checked_when_traced():
    @jaxops.custom_op("proftest::twice", mutates_args=())
    def twice(x: jax.Array) -> jax.Array:
        return 2 * x

    t1 = TensorMetadata(1, F32, "cpu")
    with jaxops.unsafe_generate_fake_kernels({"proftest::twice": {OpProfile((t1,), t1)}}):
        assert jax.eval_shape(twice, S((4,), jnp.float32)).shape == (4,)
        with pytest.raises(MissingOpProfile, match="proftest::twice"):
            jax.eval_shape(twice, S((4, 2), jnp.float32))
        # eager calls on concrete arrays run the real kernel and are not checked
        np.testing.assert_allclose(np.asarray(twice(jnp.ones((2, 2)))), 2 * np.ones((2, 2)))


def test_hand_made_profiles_without_hints():
    @jaxops.custom_op("proftest::reduce", mutates_args=(), host=True)
    def reduce(x: jax.Array) -> jax.Array:
        return x.sum(-1)

    t2, t1 = TensorMetadata(2, F32, "cpu"), TensorMetadata(1, F32, "cpu")
    with jaxops.unsafe_generate_fake_kernels({"proftest::reduce": {OpProfile((t2,), t2)}}):
        assert jax.eval_shape(reduce, S((4, 3), jnp.float32)).shape == (4, 3)  # same-rank guess
    with jaxops.unsafe_generate_fake_kernels({"proftest::reduce": {OpProfile((t2,), t1)}}):
        (n,) = jax.eval_shape(reduce, S((4, 3), jnp.float32)).shape
        assert not isinstance(n, int)  # unknown from rank alone: a symbolic size


def test_invalid_arguments_to_unsafe_generate_fake_kernels():
    with pytest.raises(TypeError, match="expects a dict"):
        with jaxops.unsafe_generate_fake_kernels([]):
            pass
    with pytest.raises(ValueError, match="keys must be op names"):
        with jaxops.unsafe_generate_fake_kernels({"nons": set()}):
            pass


def test_plan_a_model_whose_host_kernels_are_not_installed(tmp_path):
    # Machine A: kernels installed; run the model for real and record.
    _define(real=True)
    w = np.ones((4, 3), np.float32)
    x = np.ones((2, 4), np.float32)
    with jaxops.record_op_profiles() as profiles:
        _model(w, x)
    path = tmp_path / "model_profiles.yaml"
    jaxops.save_op_profiles(profiles, path)

    # Machine B: the ops are declared, but their kernels raise and there is no fake.
    mm, relu = _define(real=False)
    assert mm._fake is None and mm._derived_fake is None
    b, = jax.export.symbolic_shape("b")
    args = (S((4, 7), jnp.float32), S((b, 4), jnp.float32))
    with pytest.raises(RuntimeError, match="no fake impl"):
        jaxops.plan(_model, *args)
    loaded = jaxops.load_op_profiles(path)
    with jaxops.unsafe_generate_fake_kernels(loaded):
        p = jaxops.plan(_model, *args)
    assert [r["op"] for r in p] == ["proftest::mm", "proftest::relu"]
    assert p.records[0]["outputs"] == [S((b, 7), jnp.float32)]
    assert p.records[1]["outputs"] == [S((b, 7), jnp.float32)]
    assert p.outputs == S((), jnp.float32)
    assert str(p).splitlines()[-1].split()[0] == "total"


# ------------------------------------------------------- hostile and malformed files (16.2)
from jaxops import profile_loader  # noqa: E402
from jaxops import profiles as _profiles  # noqa: E402

HEAD = f"version: {jaxops.__version__}\nformat: 1\n"
GOOD_ENTRY = "- args_profile: [{tensor: {rank: 2, dtype: float32, device: cpu}}]\n  out_profile: {rank: 2, dtype: float32}\n"


def _load_text(text):
    return jaxops.load_op_profiles(io.StringIO(text))


def _laughs(leaf: str, levels: int = 9, fan: int = 10) -> str:
    """A "billion laughs" document: each level is `fan` aliases of the one below."""
    lines = [f"l0: &l0 [{', '.join([leaf] * fan)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("leaf", ["lol", "1"])
def test_alias_bombs_are_rejected_before_expansion(leaf):
    with pytest.raises(ValueError, match="MAX_NODES") as e:
        _load_text(HEAD + "junk:\n" + "".join("  " + ln + "\n" for ln in _laughs(leaf).splitlines()))
    assert len(str(e.value)) <= 1000


def test_alias_count_is_limited():
    many = ", ".join(["*s"] * (_profiles.MAX_ALIASES + 1))
    with pytest.raises(ValueError, match="MAX_ALIASES"):
        _load_text(HEAD + f"x: &s 1\ny: [{many}]\n")


def test_a_few_aliases_within_limits_load():
    text = HEAD + "operators:\n  ns::op:\n  - args_profile: [{tensor: &m {rank: 1, dtype: float32}}]\n    out_profile: *m\n"
    (prof,) = _load_text(text)["ns::op"]
    assert prof.out_profile == TensorMetadata(1, "float32", "cpu")


def test_recursive_alias_and_deep_nesting_raise_valueerror_not_recursionerror():
    with pytest.raises(ValueError, match="recursive alias"):
        _load_text(HEAD + "operators: &a {x: *a}\n")
    with pytest.raises(ValueError, match="recursive alias"):
        _load_text(HEAD + "junk: &a [1, [2, *a]]\n")
    with pytest.raises(ValueError, match="MAX_DEPTH"):
        _load_text(HEAD + "junk: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ValueError, match="MAX_DEPTH"):
        _load_text(HEAD + "junk: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n")


def test_file_size_is_limited_for_paths_and_file_objects(tmp_path):
    big = HEAD + "operators: {}\n" + "#" * (_profiles.MAX_FILE_BYTES + 10) + "\n"
    path = tmp_path / "big.yaml"
    path.write_text(big)
    for source in (path, str(path), io.StringIO(big), io.BytesIO(big.encode())):
        with pytest.raises(ValueError, match="MAX_FILE_BYTES"):
            jaxops.load_op_profiles(source)


def test_op_and_profile_counts_are_limited(monkeypatch):
    monkeypatch.setattr(profile_loader, "MAX_OPS", 2)
    ops = "".join(f"  ns::op{i}: []\n" for i in range(3))
    with pytest.raises(ValueError, match="MAX_OPS"):
        _load_text(HEAD + "operators:\n" + ops)
    monkeypatch.setattr(profile_loader, "MAX_PROFILES", 3)
    entries = "".join("  " + ln + "\n" for ln in (GOOD_ENTRY * 4).splitlines())
    with pytest.raises(ValueError, match="MAX_PROFILES"):
        _load_text(HEAD + "operators:\n  ns::op:\n" + entries)


def test_huge_rank_is_rejected():
    entry = GOOD_ENTRY.replace("rank: 2, dtype: float32, device", "rank: 1000000000, dtype: float32, device")
    with pytest.raises(ValueError, match=r"args_profile\[0\]\.tensor\.rank: 1000000000 is out of range"):
        _load_text(HEAD + "operators:\n  ns::op:\n" + "".join("  " + ln + "\n" for ln in entry.splitlines()))
    with pytest.raises(ValueError, match="at most 64"):
        TensorMetadata(10**9, "float32", "cpu")


def _doc(entry: str) -> str:
    return HEAD + "operators:\n  ns::op:\n" + "".join("  " + ln + "\n" for ln in entry.splitlines())


META = "{rank: 2, dtype: float32}"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (HEAD + "operators: [1, 2]\n", "operators: expected a mapping"),
        (HEAD + "operators:\n  ns::op: 5\n", r"operators\['ns::op'\]: expected a list"),
        (HEAD + "operators:\n  7: []\n", "op names 'ns::name'"),
        (HEAD + "operators:\n  noseparator: []\n", "op names 'ns::name'"),
        (HEAD + "operators:\n  ns::op: [5]\n", r"operators\['ns::op'\]\[0\]: expected a mapping"),
        (_doc(f"- out_profile: {META}\n"), "missing field 'args_profile'"),
        (_doc("- args_profile: []\n"), "missing field 'out_profile'"),
        (_doc(f"- args_profile: 3\n  out_profile: {META}\n"), r"\.args_profile: expected a list, got int"),
        (_doc(f"- args_profile: [5]\n  out_profile: {META}\n"), r"args_profile\[0\]: expected a mapping"),
        (_doc(f"- args_profile: [{{tensor: 5}}]\n  out_profile: {META}\n"), r"args_profile\[0\]\.tensor: expected a mapping"),
        (_doc(f"- args_profile: [{{tensors: 5}}]\n  out_profile: {META}\n"), r"args_profile\[0\]\.tensors: expected a list"),
        (_doc(f"- args_profile: [{{value: {{a: 1}}}}]\n  out_profile: {META}\n"), r"args_profile\[0\]\.value: unknown field 'a'"),
        (_doc(f"- args_profile: [{{weird: 1}}]\n  out_profile: {META}\n"), r"args_profile\[0\]: unknown field 'weird'"),
        (_doc("- args_profile: []\n  out_profile: {rank: '2', dtype: float32}\n"), r"out_profile\.rank: expected an int, got str"),
        (_doc("- args_profile: []\n  out_profile: {rank: true, dtype: float32}\n"), r"out_profile\.rank: expected an int, got bool"),
        (_doc("- args_profile: []\n  out_profile: {rank: 2, dtype: 7}\n"), r"out_profile\.dtype: expected a dtype name"),
        (_doc("- args_profile: []\n  out_profile: {rank: 2, dtype: nonsense}\n"), r"out_profile\.dtype: 'nonsense' is not a dtype"),
        (_doc("- args_profile: []\n  out_profile: {rank: 2, dtype: float32, device: [1]}\n"), r"out_profile\.device: expected a platform"),
        (_doc("- args_profile: []\n  out_profile: {rank: 2, dtype: float32, extra: 1}\n"), r"out_profile: unknown field 'extra'"),
        (_doc("- args_profile: []\n  out_profile: 3\n"), r"out_profile: expected a mapping"),
        (_doc("- args_profile: []\n  out_profile: null\n"), r"out_profile: expected tensor metadata"),
        (_doc(f"- args_profile: []\n  out_profile: {META}\n  dims: 5\n"), r"\.dims: expected a list"),
        (_doc(f"- args_profile: []\n  out_profile: {META}\n  dims: [[[[bogus]]]]\n"), r"\.dims\[0\]\[0\]\[0\]: expected \['arg'"),
        (_doc(f"- args_profile: []\n  out_profile: {META}\n  dims: [[[[const, x]]]]\n"), r"\.dims\[0\]\[0\]\[0\]\[1\]: expected an int"),
        (HEAD + "operators: {}\nextra: 1\n", "the top level: unknown field 'extra'"),
        ("version: 0.1\nformat: 1\n", "version: expected a version string"),
        (f"version: {jaxops.__version__}\nformat: one\n", "format: expected an int"),
    ],
)
def test_every_wrong_typed_field_is_a_valueerror_naming_it(text, field):
    with pytest.raises(ValueError, match=field) as e:
        _load_text(text)
    assert len(str(e.value)) <= 1000


def test_error_messages_are_truncated():
    text = _doc(f"- args_profile: []\n  out_profile: {{rank: '{'x' * 100_000}', dtype: float32}}\n")
    with pytest.raises(ValueError, match="out_profile.rank") as e:
        _load_text(text)
    assert len(str(e.value)) < 300


def test_nested_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    text = _doc(f"- args_profile: [{{value: !!python/object/apply:os.system ['touch {marker}']}}]\n  out_profile: {META}\n")
    with pytest.raises(ValueError, match="Python object tags are refused"):
        _load_text(text)
    with pytest.raises(ValueError, match="Python object tags are refused"):
        _load_text(HEAD + "operators: !!python/name:os.system {}\n")
    assert not marker.exists()


# ------------------------------------------------------------------ versions (17.4)
def test_minor_versions_before_1_0_are_incompatible(monkeypatch):
    with pytest.raises(RuntimeError, match="Unable to load outdated profile"):
        _load_text("version: 0.0.0\nformat: 1\noperators: {}\n")
    major, minor, *_ = jaxops.__version__.split(".")
    assert _load_text(f"version: {major}.{minor}.99\nformat: 1\noperators: {{}}\n") == {}
    with pytest.raises(RuntimeError, match="Unable to load outdated profile"):
        _load_text(f"version: {jaxops.__version__}\nformat: 2\noperators: {{}}\n")
    monkeypatch.setattr(jaxops.version, "__version__", "1.4.0")
    assert _load_text("version: 1.0.2\nformat: 1\noperators: {}\n") == {}
    with pytest.raises(RuntimeError, match="Unable to load outdated profile"):
        _load_text("version: 2.0.0\nformat: 1\noperators: {}\n")


def test_round_trip_keeps_working_with_the_checks():
    meta = TensorMetadata(2, "float32", "cpu")
    profs = {"ns::op": {OpProfile((meta, (1, 2), np.dtype("int32"), None, "s"), (meta, meta), dims=None)}}
    buf = io.StringIO()
    jaxops.save_op_profiles(profs, buf)
    buf.seek(0)
    assert jaxops.load_op_profiles(buf) == profs


# ------------------------------------------------------------- junk arguments (16.7/16.8)
def test_junk_arguments_name_the_parameter():
    meta = TensorMetadata(2, "float32", "cpu")
    buf = io.StringIO()
    with pytest.raises(TypeError, match="save_op_profiles: op_profiles must be a dict"):
        jaxops.save_op_profiles(5, buf)
    with pytest.raises(TypeError, match=r"op_profiles\['ns::op'\] must be a set of OpProfile, got int"):
        jaxops.save_op_profiles({"ns::op": 5}, buf)
    with pytest.raises(TypeError, match=r"op_profiles\['ns::op'\] must hold OpProfile objects, got str"):
        jaxops.save_op_profiles({"ns::op": {"x"}}, buf)
    with pytest.raises(ValueError, match="op_profiles keys must be op names"):
        jaxops.save_op_profiles({3: set()}, buf)
    with pytest.raises(TypeError, match="save_op_profiles: f must be a path or a file object, got int"):
        jaxops.save_op_profiles({}, 5)
    with pytest.raises(TypeError, match="load_op_profiles: f must be a path or a file object, got int"):
        jaxops.load_op_profiles(5)
    with pytest.raises(TypeError, match="OpProfile: args_profile must be a tuple"):
        OpProfile(5, meta)
    with pytest.raises(TypeError, match=r"OpProfile: args_profile\[1\] must be a TensorMetadata or a hashable"):
        OpProfile((meta, {"a": 1}), meta)
    with pytest.raises(TypeError, match="out_profile must be a TensorMetadata or a non-empty tuple"):
        OpProfile((meta,), ())
    with pytest.raises(ValueError, match="TensorMetadata: dtype must be a dtype"):
        TensorMetadata(2, "notadtype", "cpu")
    with pytest.raises(ValueError, match="TensorMetadata: rank must be a non-negative int"):
        TensorMetadata("2", "float32", "cpu")
    with pytest.raises(TypeError, match="TensorMetadata: device must be a platform name"):
        TensorMetadata(2, "float32", 5)
    with pytest.raises(TypeError, match=r"unsafe_generate_fake_kernels: op_profiles\['ns::op'\] must be a set"):
        with jaxops.unsafe_generate_fake_kernels({"ns::op": 5}):
            pass


def test_outdated_files_are_reported_as_outdated_whatever_their_layout():
    with pytest.raises(RuntimeError, match="Unable to load outdated profile"):
        _load_text("version: 0.0.0-ancient\nops: {}\n")
    with pytest.raises(RuntimeError, match="Unable to load outdated profile"):
        _load_text("torch_version: 2.5\nops: []\n")


def test_limits_hold_with_the_pure_python_yaml_parser(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "yaml._yaml", None)  # as if PyYAML had no libyaml
    monkeypatch.setattr(profile_loader, "_LOADER", [])
    with pytest.raises(ValueError, match="MAX_NODES"):
        _load_text(HEAD + "junk:\n" + "".join("  " + ln + "\n" for ln in _laughs("1").splitlines()))
    with pytest.raises(ValueError, match="MAX_DEPTH"):
        _load_text(HEAD + "junk: " + "[" * 5_000 + "]" * 5_000 + "\n")
    with pytest.raises(ValueError, match="recursive alias"):
        _load_text(HEAD + "junk: &a [1, *a]\n")
    with pytest.raises(ValueError, match="Python object tags are refused"):
        _load_text(HEAD + "operators: !!python/name:os.system {}\n")
    (prof,) = _load_text(_doc("- args_profile: []\n  out_profile: {rank: 2, dtype: float32}\n"))["ns::op"]
    assert prof.out_profile.rank == 2
    assert "CParser" not in [c.__name__ for c in profile_loader._LOADER[0].__mro__]
