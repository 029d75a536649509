"""Compiled C++ (and CUDA) kernels through XLA's FFI: ``jaxops.ffi`` (API.md §2).

Builds real shared libraries with the system compiler into a per-session cache
directory; skips (saying why) only where no C++ compiler exists.  The CUDA test is
``@pytest.mark.gpu`` and skips without a JAX GPU backend or without ``nvcc``.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
import jaxops.ffi as ffi
import jaxops.ffi_build as ffi_build

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    ffi.find_cxx() is None, reason="no C++ compiler (c++/g++/clang++ or $CXX) to build FFI kernels"
)

#: The C++ kernels are CPU kernels: every test but the CUDA one runs on the CPU device,
#: also on a GPU machine (where JAX's default device is the GPU).
CPU = jax.devices("cpu")[0]
X = jax.device_put(np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], dtype=np.float32), CPU)


@pytest.fixture(autouse=True)
def _on_cpu(request):
    if request.node.get_closest_marker("gpu"):
        yield
        return
    with jax.default_device(CPU):
        yield


@pytest.fixture(scope="session", autouse=True)
def _ffi_cache(tmp_path_factory):
    """Builds go to a fresh cache for this session (they are compiled at least once)."""
    mp = pytest.MonkeyPatch()
    mp.setenv(ffi.CACHE_ENV, str(tmp_path_factory.mktemp("ffi-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def cpp_ops():
    """examples/cpp_ops.py with its C++ kernels built and registered."""
    spec = importlib.util.spec_from_file_location("cpp_ops_example", ROOT / "examples" / "cpp_ops.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cpp_ops_example"] = mod
    spec.loader.exec_module(mod)
    mod.module = mod.build()
    return mod


# ------------------------------------------------------------------------ the example
def test_softmax_runs_cpp_eagerly_and_under_jit(cpp_ops):
    ref = jax.nn.softmax(X, axis=-1)
    np.testing.assert_allclose(cpp_ops.softmax(X), ref, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(cpp_ops.softmax)(X), ref, rtol=1e-6)
    hlo = jax.jit(cpp_ops.softmax).lower(X).as_text()
    assert "cpp_ops_softmax_fwd" in hlo
    # Other ranks: rows are the last axis.
    x3 = jnp.arange(24.0, dtype=jnp.float32).reshape(2, 3, 4) / 7
    np.testing.assert_allclose(cpp_ops.softmax(x3), jax.nn.softmax(x3, axis=-1), rtol=1e-6)


def test_softmax_reference_body_is_the_default_kernel(cpp_ops):
    hlo = jax.jit(cpp_ops.softmax).lower(X).as_text()
    assert "custom_call" in hlo
    assert cpp_ops.module.platforms["cpp_ops_softmax_fwd"] == ("cpu",)
    assert cpp_ops.module.targets == {name: name for name in cpp_ops.FUNCTIONS}


def test_grad_runs_the_cpp_backward(cpp_ops):
    w = jnp.array([1.0, -2.0, 0.5])

    def loss(f):
        return lambda x: (f(x) * w).sum()

    expected = jax.grad(loss(lambda x: jax.nn.softmax(x, axis=-1)))(X)
    np.testing.assert_allclose(jax.grad(loss(cpp_ops.softmax))(X), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.grad(loss(cpp_ops.softmax)))(X), expected, rtol=1e-5, atol=1e-7)
    hlo = jax.jit(jax.grad(loss(cpp_ops.softmax))).lower(X).as_text()
    assert "cpp_ops_softmax_fwd" in hlo and "cpp_ops_softmax_bwd" in hlo


def test_port_cpp_op_backed_by_autograd_function_gradient_of_ones(cpp_ops):
    # PyTorch test_custom_ops: x = ones(2, 2); op(x).sum().backward(); x.grad == ones.
    x = jnp.ones((2, 2), dtype=jnp.float32)
    out = cpp_ops.identity(x)
    np.testing.assert_array_equal(out, x)
    grad = jax.grad(lambda v: cpp_ops.identity(v).sum())(x)
    np.testing.assert_array_equal(grad, jnp.ones((2, 2)))
    hlo = jax.jit(jax.value_and_grad(lambda v: cpp_ops.identity(v).sum())).lower(x).as_text()
    assert hlo.count("@cpp_ops_identity") >= 2  # forward and backward both run the C++ copy


@pytest.mark.parametrize("method", ["sequential", "broadcast_all", "expand_dims"])
def test_vmap_with_stated_method(cpp_ops, method):
    op = jaxops.custom_op("t_ffi::softmax_vm", lambda x: jax.nn.softmax(x, -1), mutates_args=(),
                          schema="(Tensor x) -> Tensor")
    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    op.register_kernel("cpu", ffi.kernel("cpp_ops_softmax_fwd", vmap_method=method))
    xs = jnp.arange(30.0, dtype=jnp.float32).reshape(5, 2, 3) / 9
    ref = jax.nn.softmax(xs, axis=-1)
    np.testing.assert_allclose(jax.vmap(op)(xs), ref, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(op, in_axes=1, out_axes=1))(xs), ref, rtol=1e-6)
    hlo = jax.jit(jax.vmap(op)).lower(xs).as_text()
    if method == "sequential":
        assert "while" in hlo  # one call per example
    else:
        assert "while" not in hlo  # the handler sees the whole batch


def test_vmap_of_grad_and_grad_of_vmap(cpp_ops):
    xs = jnp.arange(30.0, dtype=jnp.float32).reshape(5, 2, 3) / 9

    def loss(f):
        return lambda x: (f(x) ** 2).sum()

    ref = jax.vmap(jax.grad(loss(lambda x: jax.nn.softmax(x, -1))))(xs)
    np.testing.assert_allclose(jax.vmap(jax.grad(loss(cpp_ops.softmax)))(xs), ref, rtol=1e-5, atol=1e-7)
    ref2 = jax.grad(lambda x: jax.vmap(loss(lambda v: jax.nn.softmax(v, -1)))(x).sum())(xs)
    got2 = jax.jit(jax.grad(lambda x: jax.vmap(loss(cpp_ops.softmax))(x).sum()))(xs)
    np.testing.assert_allclose(got2, ref2, rtol=1e-5, atol=1e-7)


def test_under_checkpoint_and_scan(cpp_ops):
    def step(carry, _):
        return jax.checkpoint(cpp_ops.softmax)(carry * 2.0), None

    def loss(x):
        out, _ = jax.lax.scan(step, x, None, length=3)
        return (out * jnp.arange(3.0)).sum()

    def ref_step(carry, _):
        return jax.nn.softmax(carry * 2.0, -1), None

    def ref_loss(x):
        out, _ = jax.lax.scan(ref_step, x, None, length=3)
        return (out * jnp.arange(3.0)).sum()

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(X), jax.grad(ref_loss)(X), rtol=1e-5, atol=1e-7)


def test_handler_error_reaches_python(cpp_ops):
    # The handler returns ffi::Error::InvalidArgument for dtypes it does not handle.
    op = jaxops.custom_op("t_ffi::softmax_any", lambda x: x, mutates_args=(), schema="(Tensor x) -> Tensor")
    op.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    op.register_kernel(None, ffi.kernel("cpp_ops_softmax_fwd"))  # the only kernel, every device
    xi = jnp.ones((2, 3), jnp.int32)
    with pytest.raises(jax.errors.JaxRuntimeError, match="only float32 and float64"):
        jax.block_until_ready(op(xi))
    np.testing.assert_allclose(op(X), jax.nn.softmax(X, -1), rtol=1e-6)  # still usable


def test_eval_shape(cpp_ops):
    out = jax.eval_shape(cpp_ops.softmax, jax.ShapeDtypeStruct((7, 5), jnp.float32))
    assert out.shape == (7, 5) and out.dtype == jnp.float32
    g = jax.eval_shape(jax.grad(lambda x: cpp_ops.softmax(x).sum()), jax.ShapeDtypeStruct((7, 5), jnp.float32))
    assert g.shape == (7, 5)


def test_export_needs_the_targets_allowed_and_then_round_trips(cpp_ops):
    from jax import export

    f = jax.jit(lambda x: cpp_ops.softmax(x) * 2)
    with pytest.raises(ValueError, match="cpp_ops_softmax_fwd"):
        export.export(f, platforms=["cpu"])(X)
    exp = export.export(f, platforms=["cpu"], disabled_checks=cpp_ops.module.disabled_checks)(X)
    assert "cpp_ops_softmax_fwd" in exp.mlir_module()
    np.testing.assert_allclose(exp.call(X), jax.nn.softmax(X, -1) * 2, rtol=1e-6)
    try:
        import flatbuffers  # noqa: F401 - jax.export's serialization needs it
    except ImportError:
        return
    again = export.deserialize(exp.serialize())
    np.testing.assert_allclose(again.call(X), jax.nn.softmax(X, -1) * 2, rtol=1e-6)


def test_opcheck_passes(cpp_ops):
    result = jaxops.opcheck(cpp_ops.softmax, (X,))
    assert result and all(v == "SUCCESS" for v in result.values()), result
    result = jaxops.opcheck(cpp_ops.identity, (X,))
    assert all(v == "SUCCESS" for v in result.values()), result


# --------------------------------------------------------------- attributes, load()
ATTR_SOURCE = r"""
#include <algorithm>
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;

// y = sign * alpha * x + n + beta + sum(offsets), sign = flip ? -1 : 1
static ffi::Error Affine(ffi::Buffer<ffi::F32> x, float alpha, int64_t n, bool flip,
                         double beta, ffi::Span<const int64_t> offsets,
                         ffi::ResultBuffer<ffi::F32> y) {
  double shift = static_cast<double>(n) + beta;
  for (int64_t o : offsets) shift += static_cast<double>(o);
  const float sign = flip ? -1.f : 1.f;
  for (size_t i = 0; i < x.element_count(); ++i)
    y->typed_data()[i] = static_cast<float>(sign * alpha * x.typed_data()[i] + shift);
  return ffi::Error::Success();
}

// Two results: the row minima and maxima of a 2-d array.  (Aliases keep the commas of
// Buffer<F32, 2> out of the macro's arguments.)
using Matrix = ffi::Buffer<ffi::F32, 2>;
using Vector = ffi::Buffer<ffi::F32, 1>;
static ffi::Error RowMinMax(Matrix x, ffi::Result<Vector> lo, ffi::Result<Vector> hi) {
  auto d = x.dimensions();
  for (int64_t r = 0; r < d[0]; ++r) {
    const float* row = x.typed_data() + r * d[1];
    lo->typed_data()[r] = *std::min_element(row, row + d[1]);
    hi->typed_data()[r] = *std::max_element(row, row + d[1]);
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(t_ffi_affine, Affine,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Attr<float>("alpha").Attr<int64_t>("n")
        .Attr<bool>("flip").Attr<double>("beta").Attr<ffi::Span<const int64_t>>("offsets")
        .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(t_ffi_row_minmax, RowMinMax,
    ffi::Ffi::Bind().Arg<Matrix>().Ret<Vector>().Ret<Vector>());
"""


@pytest.fixture(scope="session")
def attr_module(tmp_path_factory):
    src = tmp_path_factory.mktemp("csrc") / "attrs.cc"
    src.write_text(ATTR_SOURCE)
    return ffi.load("t_ffi_attrs", [src])  # functions found from XLA_FFI_DEFINE_HANDLER_SYMBOL


def _affine_op(name="t_ffi::affine", **options):
    @jaxops.custom_op(name, mutates_args=())
    def affine(x: jax.Array, alpha: float, n: int, flip: bool = False, beta: float = 0.0,
               offsets: list[int] = ()) -> jax.Array:
        sign = -1.0 if flip else 1.0
        return sign * alpha * x + n + beta + sum(offsets)

    affine.register_fake(lambda x, *a, **k: jax.ShapeDtypeStruct(x.shape, x.dtype))
    affine.register_kernel("cpu", ffi.kernel("t_ffi_affine", attr_types={"beta": np.float64}, **options))
    return affine


def test_load_finds_handlers_and_non_array_args_become_typed_attributes(attr_module):
    assert sorted(attr_module.targets) == ["t_ffi_affine", "t_ffi_row_minmax"]
    affine = _affine_op()
    x = jnp.array([1.0, 2.0])
    np.testing.assert_allclose(affine(x, 2.0, 3, True, 0.25, [1, 2]), -2 * x + 6.25)
    np.testing.assert_allclose(affine(x, 2.0, 3), 2 * x + 3)  # defaults become attributes too
    f = jax.jit(lambda x: affine(x, alpha=0.5, n=-1, offsets=[10]))
    np.testing.assert_allclose(f(x), 0.5 * x + 9)
    assert "t_ffi_affine" in f.lower(x).as_text()


def test_traced_attribute_names_op_parameter_and_static_argnums(attr_module):
    affine = _affine_op("t_ffi::affine_traced")
    x = jnp.array([1.0, 2.0])
    # Whether the op's binding or the kernel refuses the traced float, the message names both.
    with pytest.raises(TypeError, match=r"t_ffi::affine_traced: .*'alpha'"):
        jax.jit(affine)(x, 2.0, 3)
    bound = ffi.kernel("t_ffi_affine").__jaxops_bind__(affine)
    with pytest.raises(TypeError, match=r"t_ffi::affine_traced: parameter 'alpha'.*traced.*static_argnums"):
        jax.jit(lambda a: bound(x, a, 3))(2.0)
    np.testing.assert_allclose(jax.jit(affine, static_argnums=(1, 2))(x, 2.0, 3), 2 * x + 3)


def test_tuple_results_from_the_fake_and_library_impl(attr_module):
    lib = jaxops.Library("t_ffi_lib", "DEF")
    try:
        lib.define("row_minmax(Tensor x) -> (Tensor, Tensor)")
        lib.impl("row_minmax", lambda x: (x.min(-1), x.max(-1)), "default")
        lib.impl("row_minmax", lambda x: (jax.ShapeDtypeStruct(x.shape[:1], x.dtype),) * 2, "Meta")
        lib.impl("row_minmax", ffi.kernel("t_ffi_row_minmax"), "cpu")
        op = jaxops.ops.t_ffi_lib.row_minmax
        lo, hi = op(X)
        np.testing.assert_allclose(lo, X.min(-1))
        np.testing.assert_allclose(hi, X.max(-1))
        assert "t_ffi_row_minmax" in jax.jit(op).lower(X).as_text()
    finally:
        lib._destroy()


def test_jaxops_impl_with_an_ffi_kernel(cpp_ops):
    op = jaxops.define("t_ffi_impl::sm", "(Tensor x) -> Tensor")
    jaxops.register_fake(op, lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    jaxops.impl("t_ffi_impl::sm", "cpu", ffi.kernel("cpp_ops_softmax_fwd"))
    np.testing.assert_allclose(op(X), jax.nn.softmax(X, -1), rtol=1e-6)


# ------------------------------------------------------------------------ building
def test_second_load_does_not_rebuild(cpp_ops, monkeypatch):
    calls = []
    monkeypatch.setattr(ffi_build, "_compile", lambda *a, **k: calls.append(a))
    with monkeypatch.context() as m:  # not even a compiler process (versions are cached)
        m.setattr(ffi_build.subprocess, "run", lambda *a, **k: pytest.fail("a process ran for a cached build"))
        again = ffi.load_inline("cpp_ops", cpp_ops.CPP_SOURCE, functions=cpp_ops.FUNCTIONS, extra_cflags=cpp_ops.CFLAGS)
    assert again.built is False and again.build_dir == cpp_ops.module.build_dir and calls == []
    # Another flag (or source, or JAX version) is another build.
    with pytest.raises(RuntimeError, match="loading the built library"):  # _compile was stubbed
        ffi.load_inline("cpp_ops", cpp_ops.CPP_SOURCE, functions=cpp_ops.FUNCTIONS,
                        extra_cflags=[*cpp_ops.CFLAGS, "-DX=1"])
    assert len(calls) == 1 and "-DX=1" in calls[0][1]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(ffi.CACHE_ENV, str(tmp_path / "c"))
    assert ffi.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(ffi.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert ffi.cache_dir() == tmp_path / "x" / "jaxops" / "ffi"


def test_cache_key_covers_sources_flags_jax_version_and_native_cpu(monkeypatch):
    units = [ffi_build._Unit("a.cc", "int x;", False)]
    base = ffi_build._digest("n", units, [["-O2"]], [])
    assert ffi_build._digest("n", [ffi_build._Unit("a.cc", "int y;", False)], [["-O2"]], []) != base
    assert ffi_build._digest("n", units, [["-O3"]], []) != base
    monkeypatch.setattr(ffi_build.jax, "__version__", "0.0.0-other")
    assert ffi_build._digest("n", units, [["-O2"]], []) != base
    monkeypatch.undo()
    native = ffi_build._digest("n", units, [["-march=native"]], [])
    monkeypatch.setattr(ffi_build, "_host_cpu", lambda: "another cpu")
    assert ffi_build._digest("n", units, [["-march=native"]], []) != native  # tuned builds stay per CPU
    assert ffi_build._digest("n", units, [["-O2"]], []) == base  # portable builds are shared


def test_build_failure_raises_runtime_error_with_compiler_message():
    bad = '#include "xla/ffi/api/ffi.h"\nint f() { return this_name_is_not_declared_anywhere; }\n'
    with pytest.raises(RuntimeError, match=r"(?s)load_inline\('t_ffi_bad'\).*building the FFI library failed"
                       r".*this_name_is_not_declared_anywhere"):
        ffi.load_inline("t_ffi_bad", bad, functions=["f"])


def test_missing_handler_symbol(cpp_ops):
    with pytest.raises(RuntimeError, match=r"no handler symbol 'not_there'.*XLA_FFI_DEFINE_HANDLER_SYMBOL"):
        ffi.load_inline("cpp_ops", cpp_ops.CPP_SOURCE, functions=["not_there"], extra_cflags=cpp_ops.CFLAGS)


def test_argument_errors():
    with pytest.raises(ValueError, match="functions must be names"):
        ffi.load_inline("t_ffi_args", "int x;", functions=["not a name"])
    with pytest.raises(ValueError, match="functions is empty"):
        ffi.load_inline("t_ffi_args", "int x;", functions=[])
    with pytest.raises(ValueError, match="name must be a library name"):
        ffi.load_inline("bad name", "int x;", functions=["f"])
    with pytest.raises(ValueError, match="cpp_source .* are empty"):
        ffi.load_inline("t_ffi_args", "  ", functions=["f"])
    with pytest.raises(FileNotFoundError, match="cannot read source"):
        ffi.load("t_ffi_args", ["/nonexistent/x.cc"])
    with pytest.raises(ValueError, match="vmap_method must be one of"):
        ffi.kernel("t", vmap_method="sideways")
    with pytest.raises(TypeError, match=r"attr_types\['a'\] must be a NumPy scalar type"):
        ffi.kernel("t", attr_types={"a": float})


def test_cuda_source_without_nvcc_says_so(monkeypatch):
    monkeypatch.setattr(ffi_build, "find_nvcc", lambda: None)
    with pytest.raises(RuntimeError, match="CUDA sources need nvcc"):
        ffi.load_inline("t_ffi_cu", "", functions=["f"], cuda_source="__global__ void k() {}")


# --------------------------------------------------------------- kernels on ops: errors
def test_kernel_needs_the_fake():
    @jaxops.custom_op("t_ffi::nofake", mutates_args=())
    def nofake(x: jax.Array) -> jax.Array:
        return x

    nofake.register_kernel("cpu", ffi.kernel("cpp_ops_identity"))
    with pytest.raises(RuntimeError, match=r"t_ffi::nofake: the FFI kernel 'cpp_ops_identity'.*no fake impl.*register_fake"):
        nofake(X)


def test_unbound_kernel_and_bad_bindings():
    with pytest.raises(RuntimeError, match="not registered on an op"):
        ffi.kernel("cpp_ops_identity")(X)

    @jaxops.custom_op("t_ffi::bind", mutates_args=())
    def bind(x: jax.Array, alpha: float) -> jax.Array:
        return x

    with pytest.raises(ValueError, match=r"t_ffi::bind: attr_types .* names 'beta'"):
        bind.register_kernel("cpu", ffi.kernel("k", attr_types={"beta": np.float64}))

    @jaxops.custom_op("t_ffi::mut", mutates_args={"out"})
    def mut(x: jax.Array, out: jax.Array) -> None:
        out[...] = x

    with pytest.raises(NotImplementedError, match=r"t_ffi::mut: an FFI kernel .* mutates \['out'\]"):
        mut.register_kernel("cpu", ffi.kernel("k"))


def test_no_autograd_formula_follows_the_fallback_mode(cpp_ops):
    @jaxops.custom_op("t_ffi::nograd", mutates_args=())
    def nograd(x: jax.Array) -> jax.Array:
        return x

    nograd.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    nograd.register_kernel("cpu", ffi.kernel("cpp_ops_identity"))
    x = jnp.ones(3)
    with pytest.warns(UserWarning, match=r"t_ffi::nograd: an autograd kernel was not registered"):
        g = jax.grad(lambda v: nograd(v).sum())(x)
    np.testing.assert_array_equal(g, jnp.zeros(3))
    with jaxops.autograd_fallback_mode("error"):
        with pytest.raises(RuntimeError, match=r"t_ffi::nograd: .*no autograd formula"):
            jax.grad(lambda v: nograd(v).sum())(x)
    with jaxops.autograd_fallback_mode("nothing"), warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(jax.grad(lambda v: nograd(v).sum())(x), jnp.zeros(3))
    # A plain call or jit never warns.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nograd(x)
        jax.jit(nograd)(x)


def test_notebook_rerun_with_changed_source_takes_effect():
    template = r"""
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
static ffi::Error Impl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  for (size_t i = 0; i < x.element_count(); ++i) y->typed_data()[i] = x.typed_data()[i] * FACTOR;
  return ffi::Error::Success();
}
XLA_FFI_DEFINE_HANDLER_SYMBOL(t_ffi_rerun, Impl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
"""

    @jaxops.custom_op("t_ffi::rerun", mutates_args=())
    def rerun(x: jax.Array) -> jax.Array:
        return x

    rerun.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    rerun.register_kernel("cpu", ffi.kernel("t_ffi_rerun"))
    x = jnp.ones(2)
    first = ffi.load_inline("t_ffi_rerun", template.replace("FACTOR", "2.f"), functions=["t_ffi_rerun"])
    assert first.targets["t_ffi_rerun"] == "t_ffi_rerun"
    np.testing.assert_allclose(rerun(x), 2 * x)
    jitted = jax.jit(lambda v: rerun(v) + 1)
    np.testing.assert_allclose(jitted(x), 2 * x + 1)
    second = ffi.load_inline("t_ffi_rerun", template.replace("FACTOR", "3.f"), functions=["t_ffi_rerun"])
    assert second.targets["t_ffi_rerun"] != "t_ffi_rerun"  # XLA keeps the first handler's name
    np.testing.assert_allclose(rerun(x), 3 * x)
    np.testing.assert_allclose(jitted(x), 3 * x + 1)  # no stale trace
    # Going back to the first source finds its handler again (from the cache, no build).
    back = ffi.load_inline("t_ffi_rerun", template.replace("FACTOR", "2.f"), functions=["t_ffi_rerun"])
    assert back.built is False and back.targets["t_ffi_rerun"] == "t_ffi_rerun"
    np.testing.assert_allclose(rerun(x), 2 * x)


def test_reachable_as_jaxops_ffi():
    assert jaxops.ffi is ffi
    assert callable(jaxops.ffi.load_inline) and callable(jaxops.ffi.load) and callable(jaxops.ffi.kernel)


# --------------------------------------------------------------------------- CUDA
CUDA_SOURCE = r"""
#include <cuda_runtime.h>
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;

__global__ void SoftmaxRows(const float* x, float* y, int64_t rows, int64_t n) {
  int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  const float* xr = x + r * n;
  float* yr = y + r * n;
  float peak = xr[0];
  for (int64_t j = 1; j < n; ++j) peak = fmaxf(peak, xr[j]);
  float total = 0.f;
  for (int64_t j = 0; j < n; ++j) { yr[j] = expf(xr[j] - peak); total += yr[j]; }
  for (int64_t j = 0; j < n; ++j) yr[j] /= total;
}

static ffi::Error Softmax(cudaStream_t stream, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  auto dims = x.dimensions();
  int64_t n = dims.size() == 0 ? 1 : dims.back();
  int64_t rows = n == 0 ? 0 : static_cast<int64_t>(x.element_count()) / n;
  const int block = 128;
  const int grid = static_cast<int>((rows + block - 1) / block);
  if (grid > 0) SoftmaxRows<<<grid, block, 0, stream>>>(x.typed_data(), y->typed_data(), rows, n);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return ffi::Error::Internal(cudaGetErrorString(err));
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(t_ffi_cuda_softmax, Softmax,
    ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>());
"""

CPU_TWIN = (ROOT / "examples" / "cpp_ops.py").read_text().split('CPP_SOURCE = r"""')[1].split('"""')[0].replace(
    "cpp_ops_softmax_fwd", "t_ffi_cuda_softmax"
).replace("cpp_ops_softmax_bwd", "t_ffi_cuda_softmax_bwd").replace("cpp_ops_identity", "t_ffi_cuda_identity")


@pytest.mark.gpu
@pytest.mark.skipif(not ffi.cuda_available(), reason="needs a JAX CUDA backend (no GPU visible to JAX)")
@pytest.mark.skipif(ffi.find_nvcc() is None, reason="needs nvcc (CUDA toolkit) to build the CUDA kernel")
def test_cuda_kernel_variant():
    mod = ffi.load_inline("t_ffi_cuda", CPU_TWIN, functions=["t_ffi_cuda_softmax"], cuda_source=CUDA_SOURCE)
    assert set(mod.platforms["t_ffi_cuda_softmax"]) == {"cpu", "cuda"}

    @jaxops.custom_op("t_ffi::cuda_softmax", mutates_args=())
    def softmax(x: jax.Array) -> jax.Array:
        return jax.nn.softmax(x, -1)

    softmax.register_fake(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    # One kernel object for both devices: the target has a handler per platform.
    softmax.register_kernel(["cpu", "gpu"], mod.kernel("t_ffi_cuda_softmax"))
    softmax.register_autograd(
        lambda ctx, g: ctx.y * (g - (g * ctx.y).sum(-1, keepdims=True)),
        setup_context=lambda ctx, inputs, out: setattr(ctx, "y", out),
    )
    gpu = jax.devices("gpu")[0]
    x = jax.device_put(jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4) / 5, gpu)
    ref = jax.nn.softmax(x, -1)
    np.testing.assert_allclose(softmax(x), ref, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(softmax)(x), ref, rtol=1e-5)
    assert "t_ffi_cuda_softmax" in jax.jit(softmax).lower(x).as_text()
    np.testing.assert_allclose(jax.vmap(softmax)(x[None].repeat(2, 0)), ref[None].repeat(2, 0), rtol=1e-5)
    g = jax.grad(lambda v: (softmax(v) * jnp.arange(4.0)).sum())(x)
    g_ref = jax.grad(lambda v: (jax.nn.softmax(v, -1) * jnp.arange(4.0)).sum())(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)
    x_cpu = jax.device_put(np.asarray(x), jax.devices("cpu")[0])
    np.testing.assert_allclose(softmax(x_cpu), np.asarray(ref), rtol=1e-5)
