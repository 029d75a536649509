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
    assert jaxops.profiles._RECORDING is False
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
    assert jaxops.profiles._ACTIVE is None and jaxops.profiles._RECORDING is False


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
