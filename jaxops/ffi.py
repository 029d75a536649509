"""Compiled C++ / CUDA kernels for ops, through XLA's FFI (PyTorch's ``cpp_extension.load_inline``).

Two halves:

* **Build and load.** :func:`load_inline` (sources as strings, e.g. from a
  notebook cell) and :func:`load` (source files) compile a shared library with
  the system C++ compiler (and ``nvcc`` for CUDA sources) against
  :func:`jax.ffi.include_dir`, cache it on disk by a hash of the sources, the
  flags, the compilers and the JAX version, load it with :mod:`ctypes` and
  register every handler named in ``functions`` (a symbol made with
  ``XLA_FFI_DEFINE_HANDLER_SYMBOL``) as an FFI target of that name: C++ handlers
  for ``"cpu"``, CUDA handlers for ``"CUDA"``.
* **Kernels on ops.** :func:`kernel` is a kernel object for
  ``op.register_kernel(device, ...)``, ``Library.impl`` and ``jaxops.impl``.  When
  registered it is bound to its op (``__jaxops_bind__``): the op's fake gives the
  result shapes of :func:`jax.ffi.ffi_call`, the op's array arguments are the
  FFI operands, and its other arguments become FFI attributes typed by the
  schema (``float`` -> ``np.float32``, ``int``/``SymInt`` -> ``np.int64``,
  ``bool`` -> ``np.bool_``, ``str`` -> ``str``, lists -> NumPy arrays of those).

The build is a plain :mod:`subprocess` call of the compiler: no build
dependency beyond the compiler itself (no CMake, ninja or setuptools), which
is what a notebook cell wants, and the command and the compiler's output are
in the error when the build fails.

>>> import numpy as np, jax, jaxops
>>> src = r'''
... #include "xla/ffi/api/ffi.h"
... namespace ffi = xla::ffi;
... static ffi::Error Twice(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
...   for (size_t i = 0; i < x.element_count(); ++i) y->typed_data()[i] = 2 * x.typed_data()[i];
...   return ffi::Error::Success();
... }
... XLA_FFI_DEFINE_HANDLER_SYMBOL(doc_twice, Twice,
...     ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
... '''
>>> mod = jaxops.ffi.load_inline("doc_twice", src, functions=["doc_twice"])  # doctest: +SKIP
>>> @jaxops.custom_op("doc::twice", mutates_args=())
... def twice(x: jax.Array) -> jax.Array:
...     return 2 * x
>>> twice.register_kernel("cpu", jaxops.ffi.kernel("doc_twice"))  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: Environment variable naming the build cache directory.
CACHE_ENV = "JAXOPS_FFI_CACHE"

#: ``vmap_method`` values :func:`jax.ffi.ffi_call` accepts.
VMAP_METHODS = ("sequential", "sequential_unrolled", "expand_dims", "broadcast_all")

_CUDA_SUFFIXES = (".cu", ".cuh")
_HANDLER_RE = re.compile(r"XLA_FFI_DEFINE_HANDLER_SYMBOL\s*\(\s*([A-Za-z_]\w*)\s*,")
_LOCK = threading.Lock()

#: FFI target name a user-facing name currently resolves to (a rebuilt library whose
#: handlers changed registers them under a suffixed name; see :func:`_register`).
_CURRENT: dict[str, str] = {}
#: (registered name, platform) -> handler address, to tell a re-registration of the
#: same handler (fine) from a changed one.
_ADDRESSES: dict[tuple[str, str], int] = {}


# ----------------------------------------------------------------- build and load
def cache_dir() -> Path:
    """Where built libraries are cached: ``$JAXOPS_FFI_CACHE``, else ``~/.cache/jaxops/ffi``.

    >>> isinstance(cache_dir(), Path)
    True
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxops" / "ffi"


def find_cxx() -> str | None:
    """The C++ compiler used for builds: ``$CXX``, else ``c++``, ``g++`` or ``clang++`` on PATH.

    >>> find_cxx() is None or isinstance(find_cxx(), str)
    True
    """
    env = os.environ.get("CXX")
    if env:
        return shutil.which(env) or env
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def find_nvcc() -> str | None:
    """``nvcc`` for CUDA sources: ``$NVCC``, PATH, ``$CUDA_HOME/bin``, ``/usr/local/cuda/bin``.

    >>> find_nvcc() is None or find_nvcc().endswith("nvcc")
    True
    """
    env = os.environ.get("NVCC")
    if env:
        return shutil.which(env) or env
    path = shutil.which("nvcc")
    if path:
        return path
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def cuda_available() -> bool:
    """Whether JAX has a CUDA backend here (so CUDA handlers can run).

    >>> isinstance(cuda_available(), bool)
    True
    """
    try:
        return any(d.platform in ("gpu", "cuda") for d in jax.devices("gpu"))
    except RuntimeError:
        return False


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One translation unit: a file name, its text, and whether ``nvcc`` compiles it."""

    filename: str
    text: str
    cuda: bool


@dataclasses.dataclass
class Module:
    """A built and loaded FFI library (what :func:`load_inline` / :func:`load` return).

    ``targets`` maps each name in ``functions`` to the FFI target it is registered
    as (the same name, unless a changed rebuild in this process had to register
    it under a fresh one: :func:`kernel` follows it); ``platforms`` maps it to the
    platforms it has a handler registered for here (a CUDA handler is built but
    not registered where JAX has no CUDA backend); ``built`` says whether this call
    compiled (``False``: taken from the cache).

    >>> # mod = jaxops.ffi.load_inline("mylib", src, functions=["my_softmax"])
    >>> # mod.targets -> {"my_softmax": "my_softmax"}; mod.kernel("my_softmax")
    """

    name: str
    build_dir: Path
    libraries: dict[str, Path]
    targets: dict[str, str]
    platforms: dict[str, tuple[str, ...]]
    built: bool
    _handles: list[ctypes.CDLL] = dataclasses.field(default_factory=list, repr=False)

    def kernel(self, function: str, **options: Any) -> FFIKernel:
        """``jaxops.ffi.kernel(function, **options)`` for one of this module's functions."""
        if function not in self.targets:
            raise ValueError(
                f"FFI module {self.name!r} has no function {function!r}; it registered "
                f"{sorted(self.targets)}"
            )
        return kernel(function, **options)

    @property
    def disabled_checks(self) -> list[Any]:
        """``jax.export`` safety checks to disable for this module's targets.

        JAX refuses to serialize custom calls it cannot guarantee stable; pass
        ``jax.export.export(f, disabled_checks=mod.disabled_checks)`` to export a
        function that calls these kernels (the importing process must load the
        same library before running it).
        """
        from jax import export

        return [export.DisabledSafetyCheck.custom_call(t) for t in self.targets.values()]


def _as_names(functions: str | Iterable[str], where: str) -> list[str]:
    names = [functions] if isinstance(functions, str) else list(functions)
    for n in names:
        if not isinstance(n, str) or not n.isidentifier():
            raise ValueError(
                f"{where}: functions must be names of C++ handler symbols (identifiers), got {n!r}"
            )
    if not names:
        raise ValueError(f"{where}: functions is empty; name at least one handler symbol")
    return names


def _as_flags(flags: str | Iterable[str], where: str, param: str) -> list[str]:
    if isinstance(flags, str):
        return flags.split()
    out = list(flags)
    for f in out:
        if not isinstance(f, str):
            raise TypeError(f"{where}: {param} must be strings, got {f!r}")
    return out


@functools.cache
def _tool_version(exe: str) -> str:
    try:
        res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        return res.stdout.strip().splitlines()[0] if res.stdout.strip() else exe
    except (OSError, subprocess.SubprocessError):
        return exe


@functools.cache
def _host_cpu() -> str:
    """The build machine's CPU model and feature flags (Linux), for ``-march=native`` builds."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(sorted(set(keep)))


def _digest(name: str, units: Sequence[_Unit], flags: Sequence[Any], tools: Sequence[str]) -> str:
    h = hashlib.sha256()
    import jaxlib

    flat = [f for group in flags for f in group]
    # A build tuned to this CPU must not be reused from a cache shared with another one.
    native = any("=native" in f for f in flat)
    for part in (
        name,
        platform.machine(),
        _host_cpu() if native else "",
        jax.__version__,
        jaxlib.__version__,
        jax.ffi.include_dir(),
        sys.platform,
        *[_tool_version(t) + "@" + t for t in tools],
        repr(list(flags)),
    ):
        h.update(part.encode())
        h.update(b"\0")
    for u in units:
        h.update(f"{u.filename}:{int(u.cuda)}:{len(u.text)}\0".encode())
        h.update(u.text.encode())
    return h.hexdigest()[:20]


def _compile(where: str, cmd: list[str], out: Path) -> None:
    """Run one compiler command writing ``out`` atomically; raise RuntimeError with its output."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    cmd = [*cmd, "-o", str(tmp)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise RuntimeError(f"{where}: could not run the compiler {cmd[0]!r}: {e}") from None
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        message = (res.stderr or "") + (res.stdout or "")
        raise RuntimeError(
            f"{where}: building the FFI library failed (exit code {res.returncode}).\n"
            f"command: {' '.join(cmd)}\n{message.strip()}"
        )
    os.replace(tmp, out)


def _build(
    name: str,
    units: Sequence[_Unit],
    *,
    extra_cflags: Sequence[str],
    extra_cuda_cflags: Sequence[str],
    extra_ldflags: Sequence[str],
    where: str,
) -> tuple[Path, dict[str, Path], bool]:
    """Compile (or find in the cache) one library per kind of source: ``{"cpu": .so, "cuda": .so}``."""
    cpu_units = [u for u in units if not u.cuda]
    cuda_units = [u for u in units if u.cuda]
    cxx = find_cxx() if cpu_units else None
    if cpu_units and cxx is None:
        raise RuntimeError(
            f"{where}: no C++ compiler found (looked for $CXX, c++, g++, clang++); install one "
            "or set CXX"
        )
    nvcc = find_nvcc() if cuda_units else None
    if cuda_units and nvcc is None:
        raise RuntimeError(
            f"{where}: the CUDA sources need nvcc, which was not found (looked for $NVCC, PATH, "
            "$CUDA_HOME/bin, /usr/local/cuda/bin); install the CUDA toolkit or set NVCC"
        )
    tools = [t for t in (cxx, nvcc) if t]
    digest = _digest(name, units, [list(extra_cflags), list(extra_cuda_cflags), list(extra_ldflags)], tools)
    build_dir = cache_dir() / f"{name}-{digest}"
    include = jax.ffi.include_dir()
    libs: dict[str, Path] = {}
    if cpu_units:
        libs["cpu"] = build_dir / f"lib{name}.so"
    if cuda_units:
        libs["cuda"] = build_dir / f"lib{name}_cuda.so"
    if all(p.exists() for p in libs.values()):
        return build_dir, libs, False
    with _LOCK:
        build_dir.mkdir(parents=True, exist_ok=True)
        for u in units:
            src = build_dir / u.filename
            if not src.exists() or src.read_text() != u.text:
                src.write_text(u.text)
        if cpu_units and not libs["cpu"].exists():
            cmd = [
                cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-Wno-attributes",
                f"-I{include}", *extra_cflags,
                *[str(build_dir / u.filename) for u in cpu_units], *extra_ldflags,
            ]
            _compile(where, cmd, libs["cpu"])  # type: ignore[list-item]
        if cuda_units and not libs["cuda"].exists():
            cmd = [
                nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
                f"-I{include}", *extra_cuda_cflags,
                *[str(build_dir / u.filename) for u in cuda_units], *extra_ldflags,
            ]
            _compile(where, cmd, libs["cuda"])  # type: ignore[list-item]
    return build_dir, libs, True


def _platform(kind: str) -> str:
    return "cpu" if kind == "cpu" else "CUDA"


def _address(sym: Any) -> int:
    return ctypes.cast(sym, ctypes.c_void_p).value or 0


def _register(fname: str, syms: Mapping[str, Any], digest: str, where: str) -> str:
    """Register one handler per platform under one target name; return that name.

    XLA refuses a second, different handler under a name it already holds (a
    notebook cell re-run with changed C++): the changed handlers then go under
    ``fname__<digest>`` and ``fname`` resolves to that from now on (:data:`_CURRENT`).
    Going back to an earlier source finds its handlers under their old name.
    """
    fresh = f"{fname}__{digest[:12]}"
    for candidate in dict.fromkeys((_CURRENT.get(fname, fname), fname, fresh)):
        if not all(_ADDRESSES.get((candidate, _platform(k))) in (None, _address(s)) for k, s in syms.items()):
            continue
        try:
            for kind, sym in syms.items():
                key = (candidate, _platform(kind))
                if key not in _ADDRESSES:
                    jax.ffi.register_ffi_target(candidate, jax.ffi.pycapsule(sym), platform=key[1])
                    _ADDRESSES[key] = _address(sym)
        except Exception as e:  # noqa: BLE001 - held by a registration made outside jaxops
            if "Duplicate" not in str(e) or candidate == fresh:
                raise RuntimeError(f"{where}: registering FFI target {candidate!r} failed: {e}") from None
            continue
        return candidate
    raise RuntimeError(f"{where}: could not register FFI target {fname!r} under any name")


def _load_and_register(
    name: str,
    build_dir: Path,
    libs: Mapping[str, Path],
    functions: Sequence[str],
    built: bool,
    where: str,
) -> Module:
    handles: dict[str, ctypes.CDLL] = {}
    for kind, path in libs.items():
        if kind == "cuda" and not cuda_available():
            continue  # built (a GPU machine finds it cached), but nothing here can run it
        try:
            handles[kind] = ctypes.CDLL(str(path))
        except OSError as e:
            raise RuntimeError(f"{where}: loading the built library {path} failed: {e}") from None
    unloaded = set(libs) - set(handles)
    digest = build_dir.name.rsplit("-", 1)[-1]
    targets: dict[str, str] = {}
    platforms: dict[str, tuple[str, ...]] = {}
    with _LOCK:
        for fname in functions:
            syms = {kind: getattr(lib, fname) for kind, lib in handles.items() if hasattr(lib, fname)}
            if not syms:
                if unloaded:  # e.g. a CUDA-only handler on a machine without a GPU
                    targets[fname] = _CURRENT.get(fname, fname)
                    platforms[fname] = ()
                    continue
                raise RuntimeError(
                    f"{where}: the library has no handler symbol {fname!r}; define it with "
                    f"XLA_FFI_DEFINE_HANDLER_SYMBOL({fname}, ...) in the sources (functions names "
                    "the handler symbols to register)"
                )
            target = _register(fname, syms, digest, where)
            if _CURRENT.get(fname, fname) != target:
                # Traces made with the old handler must not be replayed.
                from jaxops import registry

                registry.bump_epoch()
            _CURRENT[fname] = target
            targets[fname] = target
            platforms[fname] = tuple("cpu" if k == "cpu" else "cuda" for k in syms)
    return Module(
        name=name,
        build_dir=build_dir,
        libraries=dict(libs),
        targets=targets,
        platforms=platforms,
        built=built,
        _handles=list(handles.values()),
    )


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"{where}: name must be a library name like 'my_ops', got {name!r}")


def load_inline(
    name: str,
    cpp_source: str | Sequence[str],
    *,
    functions: str | Iterable[str],
    extra_cflags: str | Iterable[str] = (),
    cuda_source: str | Sequence[str] | None = None,
    extra_cuda_cflags: str | Iterable[str] = (),
    extra_ldflags: str | Iterable[str] = (),
) -> Module:
    """Build C++ (and CUDA) sources given as strings and register their FFI handlers.

    ``functions`` names the handler symbols (made with ``XLA_FFI_DEFINE_HANDLER_SYMBOL``)
    to register as FFI targets of the same names: those in ``cpp_source`` for the
    CPU, those in ``cuda_source`` (compiled with ``nvcc``) for CUDA.  The build is
    cached by a hash of the sources, flags, compilers and JAX version, so a second
    call (or a re-run cell) does not rebuild.  A build failure raises
    ``RuntimeError`` carrying the compiler's message.

    >>> # mod = jaxops.ffi.load_inline("my_ops", CPP_SOURCE, functions=["my_softmax"])
    >>> # op.register_kernel("cpu", jaxops.ffi.kernel("my_softmax"))
    """
    where = f"jaxops.ffi.load_inline({name!r})"
    _check_name(name, where)
    names = _as_names(functions, where)
    cpp = [cpp_source] if isinstance(cpp_source, str) else list(cpp_source or ())
    cuda = [] if cuda_source is None else ([cuda_source] if isinstance(cuda_source, str) else list(cuda_source))
    if not any(s.strip() for s in cpp) and not any(s.strip() for s in cuda):
        raise ValueError(f"{where}: cpp_source (and cuda_source) are empty; give the C++ source text")
    units = [_Unit(f"{name}_{i}.cc", s, False) for i, s in enumerate(cpp) if s.strip()]
    units += [_Unit(f"{name}_cuda_{i}.cu", s, True) for i, s in enumerate(cuda) if s.strip()]
    build_dir, libs, built = _build(
        name,
        units,
        extra_cflags=_as_flags(extra_cflags, where, "extra_cflags"),
        extra_cuda_cflags=_as_flags(extra_cuda_cflags, where, "extra_cuda_cflags"),
        extra_ldflags=_as_flags(extra_ldflags, where, "extra_ldflags"),
        where=where,
    )
    return _load_and_register(name, build_dir, libs, names, built, where)


def load(
    name: str,
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    functions: str | Iterable[str] | None = None,
    extra_cflags: str | Iterable[str] = (),
    extra_cuda_cflags: str | Iterable[str] = (),
    extra_ldflags: str | Iterable[str] = (),
) -> Module:
    """Build C++/CUDA source files (``.cu`` go to ``nvcc``) and register their FFI handlers.

    ``functions`` defaults to every ``XLA_FFI_DEFINE_HANDLER_SYMBOL(name, ...)`` in the
    sources.  Relative ``#include "..."`` of headers beside a source keep working
    (its directory is on the include path); the cache key covers the sources'
    text, not those headers, so change a source (or a flag) after editing one.

    >>> # mod = jaxops.ffi.load("my_ops", ["csrc/softmax.cc", "csrc/softmax.cu"])
    """
    where = f"jaxops.ffi.load({name!r})"
    _check_name(name, where)
    paths = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not paths:
        raise ValueError(f"{where}: sources is empty; give at least one source file")
    units = []
    dirs: list[str] = []
    for i, p in enumerate(paths):
        path = Path(p)
        try:
            text = path.read_text()
        except OSError as e:
            raise FileNotFoundError(f"{where}: cannot read source {str(path)!r}: {e}") from None
        cuda = path.suffix in _CUDA_SUFFIXES
        units.append(_Unit(f"{i}_{path.name}", text, cuda))
        parent = str(path.resolve().parent)
        if parent not in dirs:
            dirs.append(parent)
    if functions is None:
        names = sorted({m for u in units for m in _HANDLER_RE.findall(u.text)})
        if not names:
            raise ValueError(
                f"{where}: no XLA_FFI_DEFINE_HANDLER_SYMBOL(...) found in the sources; name the "
                "handlers with functions="
            )
    else:
        names = _as_names(functions, where)
    includes = [f"-I{d}" for d in dirs]
    build_dir, libs, built = _build(
        name,
        units,
        extra_cflags=[*includes, *_as_flags(extra_cflags, where, "extra_cflags")],
        extra_cuda_cflags=[*includes, *_as_flags(extra_cuda_cflags, where, "extra_cuda_cflags")],
        extra_ldflags=_as_flags(extra_ldflags, where, "extra_ldflags"),
        where=where,
    )
    return _load_and_register(name, build_dir, libs, names, built, where)


# ------------------------------------------------------------------ kernels on ops
_DEFAULT_ATTR_TYPES: dict[str, Any] = {
    "float": np.float32,
    "SymInt": np.int64,
    "int": np.int64,
    "bool": np.bool_,
    "str": str,
}


#: Schema types an FFI kernel's op may have: arrays (operands), devices (not passed), attributes.
_BINDABLE = frozenset({"Tensor", "Device", "Scalar", "ScalarType", *_DEFAULT_ATTR_TYPES})


def _scalar_attr_type(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return np.bool_
    if isinstance(value, (int, np.integer)):
        return np.int64
    return np.float32


class FFIKernel:
    """An op kernel that runs an FFI target (make one with :func:`kernel`).

    Unbound it only carries the target and options; registering it on an op
    (``register_kernel``, ``Library.impl``, ``jaxops.impl``) binds a copy to the
    op (:meth:`__jaxops_bind__`), which reads the op's schema and fake.

    >>> k = kernel("my_softmax", vmap_method="broadcast_all")
    >>> k.target, k.vmap_method
    ('my_softmax', 'broadcast_all')
    """

    def __init__(
        self,
        target: str,
        *,
        vmap_method: str | None = None,
        attr_types: Mapping[str, Any] | None = None,
        has_side_effect: bool = False,
        op: Any = None,
    ) -> None:
        self.target = target
        self.vmap_method = vmap_method
        self.attr_types = dict(attr_types or {})
        self.has_side_effect = has_side_effect
        self.op = op
        self.__name__ = f"ffi:{target}"
        self.__qualname__ = self.__name__

    def __repr__(self) -> str:
        bound = f" bound to {self.op.name}" if self.op is not None else ""
        return f"<jaxops.ffi.kernel {self.target!r}{bound}>"

    @property
    def resolved_target(self) -> str:
        """The FFI target name this kernel calls now (it follows a changed rebuild)."""
        return _CURRENT.get(self.target, self.target)

    def __jaxops_bind__(self, op: Any) -> FFIKernel:
        """A copy of this kernel bound to ``op`` (called by jaxops when it is registered)."""
        fs = op.function_schema
        if op.mutated_args:
            raise NotImplementedError(
                f"{op.name}: an FFI kernel ({self.target!r}) cannot implement an op that mutates "
                f"{sorted(op.mutated_args)}; declare a functional op that returns the new values"
            )
        names = {a.name for a in fs.arguments}
        for pname in self.attr_types:
            if pname not in names:
                raise ValueError(
                    f"{op.name}: attr_types of FFI kernel {self.target!r} names {pname!r}, which is "
                    f"not a parameter of the op ({', '.join(sorted(names))})"
                )
        for a in fs.arguments:
            if a.type.base not in _BINDABLE:
                raise TypeError(
                    f"{op.name}: parameter {a.name!r} of type {a.type} cannot become an FFI "
                    f"attribute of kernel {self.target!r}"
                )
        return FFIKernel(
            self.target,
            vmap_method=self.vmap_method,
            attr_types=self.attr_types,
            has_side_effect=self.has_side_effect,
            op=op,
        )

    # -- the call -------------------------------------------------------------------
    def _values(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        fs = self.op.function_schema
        values = []
        it = iter(args)
        for a in fs.arguments:
            if not a.kwarg_only and len(values) < len(args):
                values.append(next(it))
            elif a.name in kwargs:
                values.append(kwargs[a.name])
            elif a.has_default:
                values.append(a.default_value)
            else:
                raise TypeError(f"{self.op.name}: FFI kernel {self.target!r} got no value for {a.name!r}")
        return values

    def _attr(self, arg: Any, value: Any) -> Any:
        op_name = self.op.name
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"{op_name}: parameter {arg.name!r} becomes an attribute of FFI kernel "
                f"{self.target!r} and must be a concrete value, but it is traced; pass it as a "
                "Python value (mark it static with static_argnums in jax.jit)"
            )
        base = arg.type.base
        if base == "ScalarType":
            return np.dtype(value).name
        kind = self.attr_types.get(arg.name)
        if arg.type.is_list:
            elem = kind or _DEFAULT_ATTR_TYPES.get(base) or (_scalar_attr_type(value[0]) if value else np.float32)
            if elem is str:
                raise TypeError(f"{op_name}: parameter {arg.name!r}: a list of str cannot be an FFI attribute")
            return np.asarray(list(value), dtype=elem)
        if kind is None:
            kind = _DEFAULT_ATTR_TYPES.get(base) or _scalar_attr_type(value)
        if kind is str:
            return str(value)
        return kind(value)

    def _shapes(self, values: list[Any]) -> Any:
        op = self.op
        fake = op.active_fake()
        if fake is None:
            short = op.name.split("::")[-1].split(".")[0]
            raise RuntimeError(
                f"{op.name}: the FFI kernel {self.target!r} takes its result shapes from the op's fake, "
                f"and there is no fake impl registered; register one with @{short}.register_fake "
                "returning jax.ShapeDtypeStruct(s) of the outputs"
            )
        fs = op.function_schema
        idx = [i for i, a in enumerate(fs.arguments) if a.type.base == "Tensor"]

        def run(arrays: list[Any]) -> Any:
            vals = list(values)
            for i, v in zip(idx, arrays):
                vals[i] = v
            pos = [v for a, v in zip(fs.arguments, vals) if not a.kwarg_only]
            kw = {a.name: v for a, v in zip(fs.arguments, vals) if a.kwarg_only}
            return fake(*pos, **kw)

        abstract = [
            jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)), values[i])
            for i in idx
        ]
        return jax.eval_shape(run, abstract)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        op = self.op
        if op is None:
            raise RuntimeError(
                f"jaxops.ffi.kernel({self.target!r}) is not registered on an op; register it with "
                "op.register_kernel('cpu', kernel), Library.impl or jaxops.impl, then call the op"
            )
        fs = op.function_schema
        values = self._values(args, kwargs)
        operands: list[Any] = []
        attrs: dict[str, Any] = {}
        for a, v in zip(fs.arguments, values):
            if a.type.base == "Tensor":
                if a.type.is_list:
                    operands.extend(x for x in v if x is not None)
                elif v is not None:
                    operands.append(v)
            elif a.type.base == "Device" or v is None:
                continue  # no attribute: a device is where the call runs, None is "absent"
            else:
                attrs[a.name] = self._attr(a, v)
        out_shapes = self._shapes(values)
        leaves, treedef = jax.tree_util.tree_flatten(out_shapes)
        method = self.vmap_method or op.vmap_method or "sequential"
        call = jax.ffi.ffi_call(
            self.resolved_target,
            [jax.ShapeDtypeStruct(o.shape, o.dtype) for o in leaves],
            vmap_method=method,
            has_side_effect=self.has_side_effect,
        )
        outs = _no_derivative(op.name, self.target, functools.partial(call, **attrs))(*operands)
        return jax.tree_util.tree_unflatten(treedef, list(outs))


def _no_derivative(op_name: str, target: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose derivative applies jaxops' autograd fallback mode instead of JAX's
    "Differentiation rule for 'ffi_call' not implemented".

    An op with ``register_autograd`` never differentiates its kernel, so this only
    matters for an FFI kernel on an op with no backward (as PyTorch: a C++ kernel
    without an autograd kernel warns and gives no gradient by default).
    """
    wrapped = jax.custom_jvp(fn)

    def jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
        out = wrapped(*primals)
        from jaxops.autograd import get_autograd_fallback_mode

        mode = get_autograd_fallback_mode()
        if mode == "error":
            raise RuntimeError(
                f"{op_name}: trying to differentiate through the FFI kernel {target!r}, and the op "
                "has no autograd formula; register one with register_autograd (its backward may "
                "call another FFI op), or use jaxops.autograd_fallback_mode('nothing') to treat "
                "its gradient as zero"
            )
        if mode == "warn":
            warnings.warn(
                f"{op_name}: an autograd kernel was not registered for this op (its kernel is the "
                f"FFI target {target!r}), so its gradient is treated as zero; register one with "
                "register_autograd, or silence this with jaxops.autograd_fallback_mode('nothing')",
                UserWarning,
                stacklevel=2,
            )
        zeros = [
            jnp.zeros(o.shape, o.dtype)
            if jnp.issubdtype(o.dtype, jnp.inexact)
            else np.zeros(o.shape, jax.dtypes.float0)
            for o in out
        ]
        return out, type(out)(zeros) if isinstance(out, tuple) else zeros

    wrapped.defjvp(jvp)
    return wrapped


def kernel(
    target: str,
    *,
    vmap_method: str | None = None,
    attr_types: Mapping[str, Any] | None = None,
    has_side_effect: bool = False,
) -> FFIKernel:
    """A kernel that runs the FFI target ``target`` (registered by :func:`load_inline` / :func:`load`).

    Register it like any kernel: ``op.register_kernel("cpu", kernel("my_softmax"))``,
    ``lib.impl("softmax", kernel("my_softmax"), "cpu")``, ``jaxops.impl(name, "gpu",
    kernel("my_softmax"))``.  The op's fake gives the result shapes and dtypes; the
    op's array arguments are the FFI operands in schema order (a ``Tensor[]``
    contributes its elements, a ``None`` nothing) and its other arguments become
    FFI attributes named like the parameters.

    Options:

    * ``vmap_method``: how ``jax.vmap`` batches the call (:func:`jax.ffi.ffi_call`'s
      values).  Default: the op's ``vmap_method``, else ``"sequential"`` (one call
      per example, always correct).  ``"expand_dims"`` / ``"broadcast_all"`` hand
      the handler the whole batch as a leading dimension: state it only when the
      handler treats leading dimensions as batch.
    * ``attr_types``: ``{parameter: numpy type}`` overriding the attribute type
      taken from the schema (e.g. ``{"alpha": np.float64}`` for an ``Attr<double>``).
    * ``has_side_effect``: keep the call even when its results are unused.

    >>> k = kernel("my_softmax", attr_types={"scale": np.float64})
    >>> k.attr_types["scale"] is np.float64
    True
    """
    if not isinstance(target, str) or not target:
        raise ValueError(f"jaxops.ffi.kernel: target must be the FFI target name (a str), got {target!r}")
    if vmap_method is not None and vmap_method not in VMAP_METHODS:
        raise ValueError(
            f"jaxops.ffi.kernel({target!r}): vmap_method must be one of {', '.join(map(repr, VMAP_METHODS))} "
            f"(jax.ffi.ffi_call's values), got {vmap_method!r}"
        )
    for pname, kind in (attr_types or {}).items():
        ok = kind is str or (isinstance(kind, type) and issubclass(kind, (np.generic,)))
        if not ok:
            raise TypeError(
                f"jaxops.ffi.kernel({target!r}): attr_types[{pname!r}] must be a NumPy scalar type "
                f"(np.float32, np.float64, np.int32, np.int64, np.bool_) or str, got {kind!r}"
            )
    return FFIKernel(target, vmap_method=vmap_method, attr_types=attr_types, has_side_effect=has_side_effect)


def registered_targets() -> dict[str, str]:
    """Target names registered through this module and what each resolves to now.

    >>> isinstance(registered_targets(), dict)
    True
    """
    return dict(_CURRENT)


__all__ = [
    "CACHE_ENV",
    "FFIKernel",
    "Module",
    "cache_dir",
    "cuda_available",
    "find_cxx",
    "find_nvcc",
    "kernel",
    "load",
    "load_inline",
    "registered_targets",
]
