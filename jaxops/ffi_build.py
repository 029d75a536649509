"""Building, caching, loading and registering FFI libraries (the machinery under ``jaxops.ffi``).

:func:`build_libraries` compiles a shared library per kind of source with the
system C++ compiler (and ``nvcc`` for CUDA sources) against
:func:`jax.ffi.include_dir`, caching it on disk (:func:`cache_dir`) by a hash of
the sources, the flags, the compilers and the JAX version; :func:`load_and_register`
loads it with :mod:`ctypes` and registers every named handler (a symbol made with
``XLA_FFI_DEFINE_HANDLER_SYMBOL``) as an FFI target of that name: C++ handlers for
``"cpu"``, CUDA handlers for ``"CUDA"``.  :func:`resolve_target` says which target a
name resolves to after a changed rebuild.  The public entry points
(``jaxops.ffi.load_inline`` / ``load``, ``Module``) and op kernels live in
:mod:`jaxops.ffi`.

The build is a plain :mod:`subprocess` call of the compiler: no build
dependency beyond the compiler itself (no CMake, ninja or setuptools), which
is what a notebook cell wants, and the command and the compiler's output are
in the error when the build fails.

>>> resolve_target("not_registered_here")
'not_registered_here'
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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

#: Environment variable naming the build cache directory.
CACHE_ENV = "JAXOPS_FFI_CACHE"

_CUDA_SUFFIXES = (".cu", ".cuh")
_HANDLER_RE = re.compile(r"XLA_FFI_DEFINE_HANDLER_SYMBOL\s*\(\s*([A-Za-z_]\w*)\s*,")
_LOCK = threading.Lock()

#: FFI target name a user-facing name currently resolves to (a rebuilt library whose
#: handlers changed registers them under a suffixed name; see :func:`_register`).
_CURRENT: dict[str, str] = {}
#: (registered name, platform) -> handler address, to tell a re-registration of the
#: same handler (fine) from a changed one.
_ADDRESSES: dict[tuple[str, str], int] = {}


# ------------------------------------------------------------ compilers and cache
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


# ------------------------------------------------------------- sources and names
@dataclasses.dataclass(frozen=True)
class _Unit:
    """One translation unit: a file name, its text, and whether ``nvcc`` compiles it."""

    filename: str
    text: str
    cuda: bool


def as_names(functions: str | Iterable[str], where: str) -> list[str]:
    """``functions`` as a non-empty list of handler symbol names; raise ValueError otherwise."""
    names = [functions] if isinstance(functions, str) else list(functions)
    for n in names:
        if not isinstance(n, str) or not n.isidentifier():
            raise ValueError(
                f"{where}: functions must be names of C++ handler symbols (identifiers), got {n!r}"
            )
    if not names:
        raise ValueError(f"{where}: functions is empty; name at least one handler symbol")
    return names


def as_flags(flags: str | Iterable[str], where: str, param: str) -> list[str]:
    """Compiler flags as a list: a str is split on whitespace; raise TypeError for a non-str item."""
    if isinstance(flags, str):
        return flags.split()
    out = list(flags)
    for f in out:
        if not isinstance(f, str):
            raise TypeError(f"{where}: {param} must be strings, got {f!r}")
    return out


def check_name(name: Any, where: str) -> None:
    """Raise ValueError unless ``name`` is a library name like ``'my_ops'``."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"{where}: name must be a library name like 'my_ops', got {name!r}")


def inline_units(
    name: str, cpp_source: str | Sequence[str], cuda_source: str | Sequence[str] | None, where: str
) -> list[_Unit]:
    """The translation units of sources given as strings (``load_inline``); raise if all are empty."""
    cpp = [cpp_source] if isinstance(cpp_source, str) else list(cpp_source or ())
    cuda = [] if cuda_source is None else ([cuda_source] if isinstance(cuda_source, str) else list(cuda_source))
    if not any(s.strip() for s in cpp) and not any(s.strip() for s in cuda):
        raise ValueError(f"{where}: cpp_source (and cuda_source) are empty; give the C++ source text")
    units = [_Unit(f"{name}_{i}.cc", s, False) for i, s in enumerate(cpp) if s.strip()]
    units += [_Unit(f"{name}_cuda_{i}.cu", s, True) for i, s in enumerate(cuda) if s.strip()]
    return units


def source_units(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], where: str
) -> tuple[list[_Unit], list[str]]:
    """The translation units of source files (``load``; ``.cu`` go to ``nvcc``) and their directories."""
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
    return units, dirs


def handler_names(units: Sequence[_Unit], where: str) -> list[str]:
    """Every ``XLA_FFI_DEFINE_HANDLER_SYMBOL(name, ...)`` in the units, sorted; raise if none."""
    names = sorted({m for u in units for m in _HANDLER_RE.findall(u.text)})
    if not names:
        raise ValueError(
            f"{where}: no XLA_FFI_DEFINE_HANDLER_SYMBOL(...) found in the sources; name the "
            "handlers with functions="
        )
    return names


# ------------------------------------------------------------------ build (cached)
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


def build_libraries(
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


# ------------------------------------------------------------ load and register
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


def load_and_register(
    build_dir: Path, libs: Mapping[str, Path], functions: Sequence[str], where: str
) -> tuple[dict[str, str], dict[str, tuple[str, ...]], list[ctypes.CDLL]]:
    """Load the built libraries with ctypes and register ``functions`` as FFI targets.

    Returns each function's target name, the platforms it is registered for here,
    and the library handles (to keep loaded).
    """
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
    return targets, platforms, list(handles.values())


def resolve_target(name: str) -> str:
    """The FFI target ``name`` resolves to now (a changed rebuild registers a suffixed one)."""
    return _CURRENT.get(name, name)


def registered_targets() -> dict[str, str]:
    """Target names registered through this module and what each resolves to now.

    >>> isinstance(registered_targets(), dict)
    True
    """
    return dict(_CURRENT)
