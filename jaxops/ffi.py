"""Compiled C++ / CUDA kernels for ops, through XLA's FFI (PyTorch's ``cpp_extension.load_inline``).

Two halves:

* **Build and load.** :func:`load_inline` (sources as strings, e.g. from a
  notebook cell) and :func:`load` (source files) compile a shared library with
  the system C++ compiler (and ``nvcc`` for CUDA sources) against
  :func:`jax.ffi.include_dir`, cache it on disk by a hash of the sources, the
  flags, the compilers and the JAX version, load it with :mod:`ctypes` and
  register every handler named in ``functions`` (a symbol made with
  ``XLA_FFI_DEFINE_HANDLER_SYMBOL``) as an FFI target of that name: C++ handlers
  for ``"cpu"``, CUDA handlers for ``"CUDA"``.  The machinery (compiler,
  cache, :mod:`ctypes`, target registration) is :mod:`jaxops.ffi_build`; its
  public helpers (:func:`cache_dir`, :func:`find_cxx`, ...) are re-exported here.
* **Kernels on ops.** :func:`kernel` is a kernel object for
  ``op.register_kernel(device, ...)``, ``Library.impl`` and ``jaxops.impl``.  When
  registered it is bound to its op (``__jaxops_bind__``): the op's fake gives the
  result shapes of :func:`jax.ffi.ffi_call`, the op's array arguments are the
  FFI operands, and its other arguments become FFI attributes typed by the
  schema (``float`` -> ``np.float32``, ``int``/``SymInt`` -> ``np.int64``,
  ``bool`` -> ``np.bool_``, ``str`` -> ``str``, lists -> NumPy arrays of those).

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
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxops import ffi_build
from jaxops.ffi_build import (
    CACHE_ENV,
    cache_dir,
    cuda_available,
    find_cxx,
    find_nvcc,
    registered_targets,
)

#: ``vmap_method`` values :func:`jax.ffi.ffi_call` accepts.
VMAP_METHODS = ("sequential", "sequential_unrolled", "expand_dims", "broadcast_all")


# ----------------------------------------------------------------- build and load
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


def _build_and_load(
    name: str,
    units: Sequence[Any],
    functions: Sequence[str],
    where: str,
    includes: Sequence[str],
    extra_cflags: str | Iterable[str],
    extra_cuda_cflags: str | Iterable[str],
    extra_ldflags: str | Iterable[str],
) -> Module:
    """Build (or find cached) the libraries of ``units``, load them and register ``functions``."""
    build_dir, libs, built = ffi_build.build_libraries(
        name,
        units,
        extra_cflags=[*includes, *ffi_build.as_flags(extra_cflags, where, "extra_cflags")],
        extra_cuda_cflags=[*includes, *ffi_build.as_flags(extra_cuda_cflags, where, "extra_cuda_cflags")],
        extra_ldflags=ffi_build.as_flags(extra_ldflags, where, "extra_ldflags"),
        where=where,
    )
    targets, platforms, handles = ffi_build.load_and_register(build_dir, libs, functions, where)
    return Module(
        name=name,
        build_dir=build_dir,
        libraries=dict(libs),
        targets=targets,
        platforms=platforms,
        built=built,
        _handles=handles,
    )


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
    ffi_build.check_name(name, where)
    names = ffi_build.as_names(functions, where)
    units = ffi_build.inline_units(name, cpp_source, cuda_source, where)
    return _build_and_load(name, units, names, where, (), extra_cflags, extra_cuda_cflags, extra_ldflags)


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
    ffi_build.check_name(name, where)
    units, dirs = ffi_build.source_units(sources, where)
    names = ffi_build.handler_names(units, where) if functions is None else ffi_build.as_names(functions, where)
    includes = [f"-I{d}" for d in dirs]
    return _build_and_load(name, units, names, where, includes, extra_cflags, extra_cuda_cflags, extra_ldflags)


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
        return ffi_build.resolve_target(self.target)

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
