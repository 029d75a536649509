"""Custom operators: :func:`custom_op` and the :class:`CustomOp` object.

An op is a named, schema-described function with a table of kernels.  Calling
it binds and validates the arguments against the schema, then runs through one
cached ``jax.jit`` callable per op (named after the op, so it shows up in
``jax.make_jaxpr`` and profiles).  Eagerly that callable's C++ dispatch cache
means no retrace per call; under an outer ``jit`` it is inlined by XLA, so the
compiled program is the same as the plain JAX code.

Host ops called eagerly on concrete arrays skip JAX entirely and call the
kernel on NumPy arrays.

>>> import jax.numpy as jnp, jaxops
>>> @jaxops.custom_op("demo::scale_add", mutates_args=())
... def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
...     return x + alpha * y
>>> scale_add.schema
'(Tensor x, Tensor y, float alpha=1.0) -> Tensor'
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np

from jaxops import dispatch as _dispatch
from jaxops import fake as _fake
from jaxops import host as _host
from jaxops import profiles
from jaxops import registry as _registry
from jaxops._binding import Binder, is_array
from jaxops.registry import _KEY
from jaxops.schema import FunctionSchema, parse_schema

RESERVED_NAMESPACES = frozenset(
    {"jax", "lax", "jnp", "numpy", "np", "aten", "prim", "prims", "jaxops", "custom_vjp", "torch", "xla"}
)

_Tracer = jax.core.Tracer

#: What tracing a body with data-dependent shapes raises (jnp.nonzero, boolean masks, ...).
_DATA_DEPENDENT_ERRORS: tuple[type[BaseException], ...] = (
    jax.errors.ConcretizationTypeError,
    jax.errors.NonConcreteBooleanIndexError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


def parse_qualname(qualname: str) -> tuple[str, str]:
    """Split ``"ns::name"``; raise ``ValueError`` for a missing ``::`` or a reserved namespace."""
    if not isinstance(qualname, str) or "::" not in qualname:
        raise ValueError(
            f"custom_op name {qualname!r} must be a qualified name 'namespace::opname' "
            "(the namespace is missing)"
        )
    ns, _, name = qualname.partition("::")
    if not ns or not name or "::" in name:
        raise ValueError(f"custom_op name {qualname!r} must look like 'namespace::opname'")
    if not ns.isidentifier() or not name.replace(".", "_").isidentifier():
        raise ValueError(f"custom_op name {qualname!r}: namespace and op name must be identifiers")
    if ns in RESERVED_NAMESPACES:
        raise ValueError(
            f"{qualname}: '{ns}' is a reserved namespace; choose your own namespace, e.g. 'mylib::{name}'"
        )
    return ns, name


def normalize_mutates_args(qualname: str, mutates_args: Any) -> str | frozenset[str]:
    if isinstance(mutates_args, str):
        if mutates_args != "unknown":
            raise ValueError(
                f"{qualname}: mutates_args must be an iterable of parameter names or the string "
                f"'unknown', got {mutates_args!r}"
            )
        return "unknown"
    try:
        return frozenset(mutates_args)
    except TypeError:
        raise ValueError(
            f"{qualname}: mutates_args must be an iterable of parameter names or 'unknown', "
            f"got {mutates_args!r}"
        ) from None


class CustomOp:
    """A custom operator.  Create one with :func:`custom_op` or :func:`jaxops.define`.

    >>> # op(x, y); op.name; op.schema; op.register_fake(...); op.register_kernel("cpu")(...)
    """

    def __init__(
        self,
        qualname: str,
        schema: FunctionSchema,
        *,
        overload: str = "",
        vmap_method: str | None = None,
        where: str = "<unknown>",
    ) -> None:
        ns, opname = parse_qualname(qualname)
        self._qualname = qualname
        self._namespace = ns
        self._opname = opname
        self._overload = overload or schema.overload_name
        self._fs = schema
        self._schema_str = str(_without_name(schema))
        self._binder = Binder(self.name, schema)
        self._array_params = [p for p in self._binder.params if p.is_array]
        self._has_device_param = any(p.type.base == "Device" for p in self._binder.params)
        self._mutated = frozenset(schema.mutated_arg_names)
        self._vmap_method = vmap_method
        self._where = where
        self.kernels = _dispatch.KernelTable()
        self._fake: tuple[Callable[..., Any], str] | None = None
        self._autograd: Any = None  # set by jaxops.autograd.register_autograd
        self._vmap_rule: Callable[..., Any] | None = None
        self._sharding_rule: Callable[..., Any] | None = None
        self._derived_fake: Callable[..., Any] | None = None  # from jaxtyping annotations
        self._shape_check: Callable[[list[Any]], None] | None = None  # jaxtyping call checks
        self._fake_cache: dict[Any, Any] = {}
        self._py_fn: Callable[..., Any] | None = None
        self._rebuild()

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """The qualified name, e.g. ``"mylib::scale_add"`` (with ``.overload`` if any)."""
        return self._qualname + (f".{self._overload}" if self._overload else "")

    @property
    def qualname(self) -> str:
        return self._qualname

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def overload_name(self) -> str:
        return self._overload

    @property
    def schema(self) -> str:
        """The schema string without the name, e.g. ``"(Tensor x) -> Tensor"``."""
        return self._schema_str

    @property
    def function_schema(self) -> FunctionSchema:
        return self._fs

    @property
    def mutated_args(self) -> frozenset[str]:
        return self._mutated

    @property
    def vmap_method(self) -> str | None:
        return self._vmap_method

    def __repr__(self) -> str:
        kernels = ", ".join(f"{k}:{v.label}" for k, v in self.kernels.items()) or "none"
        parts = [f"kernels[{kernels}]"]
        if self._fake is not None:
            parts.append("fake")
        if self._autograd is not None:
            parts.append("autograd")
        if self._vmap_rule is not None:
            parts.append("vmap")
        return f"<jaxops.CustomOp {self.name}{self._schema_str} {' '.join(parts)}>"

    # ------------------------------------------------------------- registration
    def _rebuild(self) -> None:
        """Drop caches after a registration changed what tracing produces.

        That includes JAX's own caches: a function jitted before a kernel, fake or
        rule was (re)registered, or before the op was redefined, would otherwise
        replay the old trace.
        """
        _registry.bump_epoch(self)  # drops the traces that used this op, nothing else
        self._jitted = self._make_jitted()
        # A host op with no autograd formula applies the fallback mode (warn / error)
        # while its derivative is traced.  JAX caches the derivative of a jitted
        # jaxpr, so a cached inner trace would apply it only the first time: such an
        # op gets a fresh inner trace per outer trace (trace time only; the outer
        # jit's cache still makes steady-state calls free).
        self._fresh_trace = self._autograd is None and self.kernels.any_host
        self._fake_cache = {}
        self._op_by_op = False  # set when the body turned out to be untraceable eagerly
        params = self._binder.params
        self._checks = [p.check for p in params]
        self._array_idx = [i for i, p in enumerate(params) if p.is_array]
        self._static_idx = [i for i, p in enumerate(params) if not p.is_array]
        self._scalar_returns = any(r.type.base != "Tensor" for r in self._fs.returns)
        kernels = self.kernels.items()
        self._fast = (
            len(kernels) == 1
            and kernels[0][0] == "default"
            and not kernels[0][1].host
            and all(p.kind == "tensor" and not p.type.optional for p in params if p.is_array)
            and bool(self._array_idx)
            and self._binder.n == self._binder.n_positional
            and not self._scalar_returns
            and not self._mutated
        )
        # A per-op subclass whose __call__ is generated for this schema: one Python
        # frame between the user and the jitted callable.
        base = CustomOp
        if self._fast:
            self.__class__ = type("CustomOp", (base,), {"__call__": _make_fast_call(self), "__module__": __name__})
        else:
            self.__class__ = base

    def _make_jitted(self) -> Callable[..., Any]:
        """The op's ``jax.jit`` callable, named after the op (plan and jaxprs show it)."""
        entry = functools.partial(_traced_entry, self)
        functools.update_wrapper(entry, _traced_entry)
        entry.__name__ = self.name  # type: ignore[attr-defined]
        entry.__qualname__ = self.name  # type: ignore[attr-defined]
        return jax.jit(entry, static_argnums=(1,))

    def _add_kernel(self, device_types: Any, fn: Callable[..., Any], host: bool, where: str) -> None:
        keys = _dispatch.normalize_device_types(self.name, device_types)
        if keys == ("default",):
            # A kernel for every device replaces all earlier ones.
            self.kernels.clear()
        self.kernels.set(keys, _dispatch.Kernel(fn, bool(host), where))
        self._rebuild()

    @overload
    def register_kernel(
        self, device_types: Any, fn: None = None, /, *, host: bool | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...

    @overload
    def register_kernel(
        self, device_types: Any, fn: Callable[..., Any], /, *, host: bool | None = None
    ) -> Callable[..., Any]: ...

    def register_kernel(self, device_types: Any, fn: Callable[..., Any] | None = None, /, *, host: bool | None = None) -> Any:
        """Register a kernel for ``device_types`` (``"cpu"``, ``"gpu"``, ``"tpu"``, a list, or None).

        ``host=True`` marks a NumPy kernel; by default a kernel is host if the op is.

        >>> # @op.register_kernel("cpu")
        >>> # def _(x): return x * 2
        """
        _dispatch.normalize_device_types(self.name, device_types)
        where = _dispatch.caller_location()

        def inner(f: Callable[..., Any]) -> Callable[..., Any]:
            self._add_kernel(device_types, f, self._default_host if host is None else host, where)
            return f

        return inner if fn is None else inner(fn)

    @property
    def _default_host(self) -> bool:
        return self.kernels.any_host

    def register_fake(self, fn: Callable[..., Any] | None = None, /) -> Any:
        """Register the shape-only implementation (see :mod:`jaxops.fake`).

        >>> # @op.register_fake
        >>> # def _(x, y, alpha=1.0): return jax.ShapeDtypeStruct(x.shape, x.dtype)
        """
        where = _dispatch.caller_location()

        def inner(f: Callable[..., Any]) -> Callable[..., Any]:
            if self._fake is not None:
                raise RuntimeError(
                    f"{self.name}: a fake (register_fake) is already registered at {self._fake[1]}; "
                    "an op has one fake. Redefine the op (re-run custom_op) to start over."
                )
            self._fake = (f, where)
            self._rebuild()
            return f

        return inner if fn is None else inner(fn)

    def register_autograd(
        self, backward: Callable[..., Any], /, *, setup_context: Callable[..., Any] | None = None
    ) -> None:
        """Register a backward formula (see :mod:`jaxops.autograd`).

        >>> # op.register_autograd(backward, setup_context=setup_context)
        """
        from jaxops import autograd

        autograd.register_autograd(self, backward, setup_context=setup_context)

    def register_vmap(self, fn: Callable[..., Any] | None = None, /) -> Any:
        """Register a batching rule ``fn(info, in_dims, *args, **kwargs) -> (out, out_dims)``."""
        from jaxops import vmap

        def inner(f: Callable[..., Any]) -> Callable[..., Any]:
            vmap.register_vmap(self, f)
            return f

        return inner if fn is None else inner(fn)

    def register_sharding(self, fn: Callable[..., Any] | None = None, /) -> Any:
        """Register a partitioning rule (``jax.experimental.custom_partitioning``)."""
        from jaxops import sharding

        def inner(f: Callable[..., Any]) -> Callable[..., Any]:
            sharding.register_sharding(self, f)
            return f

        return inner if fn is None else inner(fn)

    # ------------------------------------------------------------------- calling
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Ops with a hot path get a generated __call__ (see _make_fast_call); this is
        # the general path.
        return self._slow_call(args, kwargs)

    def _slow_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        values = self._binder.bind(args, kwargs)
        if self._mutated:  # copy-outs and jax.Ref write-back (jaxops.mutation)
            from jaxops import mutation

            return mutation.call(self, values)
        arrays, statics = self._split(values)
        if profiles._RECORDING:
            out = self._call(values, arrays, statics)
            profiles._record_call(self, values, out)
            return out
        return self._call(values, arrays, statics)

    def _call(self, values: list[Any], arrays: tuple[Any, ...], statics: tuple[Any, ...]) -> Any:
        leaves = jax.tree_util.tree_leaves(arrays)
        concrete = not any(isinstance(v, _Tracer) for v in leaves)
        if not concrete:
            _registry.note_traced(self)
        if not leaves:
            device = self._factory_device(values)
            if concrete and device is not None:
                return self._call_factory(values, device)
        if concrete and leaves and self.kernels:
            platform = _platform_of_leaves(leaves)
            kernel = self.kernels.for_platform(platform)
            if kernel is None:
                raise self._no_kernel_error(platform)
            if kernel.host:
                return self._call_host_eager(kernel, values, leaves)
        if concrete and self._op_by_op:
            out = self._run_op_by_op(arrays, statics)
        else:
            jitted = self._make_jitted() if self._fresh_trace and not concrete else self._jitted
            try:
                out = jitted(arrays, (statics, _KEY[0]))
            except _DATA_DEPENDENT_ERRORS:
                if not concrete:
                    raise
                out = self._run_op_by_op(arrays, statics)
        if concrete and self._scalar_returns:
            return self._finish_eager(out)
        return out

    def _run_op_by_op(self, arrays: tuple[Any, ...], statics: tuple[Any, ...]) -> Any:
        """Eager fallback for a traceable body that cannot be traced (data-dependent shapes).

        ``jnp.nonzero(x)`` and friends work on concrete arrays only; eagerly the op
        then runs its body op by op, as PyTorch would.  Under an outer ``jit`` the
        tracing error reaches the user unchanged.  The op remembers this (until its
        next registration), so later eager calls do not try to trace it again.
        """
        if not self._op_by_op:
            self._op_by_op = True
            self.__class__ = CustomOp  # leave the generated hot path: it would trace first
        with jax.disable_jit():
            return self._jitted(arrays, (statics, _KEY[0]))

    def _eager_fallback(self, args: tuple[Any, ...], exc: BaseException) -> Any:
        """Called by the generated hot path when tracing the body failed."""
        if any(isinstance(a, _Tracer) for a in args):
            raise exc
        values = self._binder.bind(args, {})
        arrays, statics = self._split(values)
        return self._run_op_by_op(arrays, statics)

    def _no_kernel_error(self, platform: str) -> RuntimeError:
        have = ", ".join(k for k, _ in self.kernels.items()) or "none"
        return RuntimeError(
            f"{self.name}: no kernel for device type '{platform}' (registered: {have}); "
            f"register one with {self._opname}.register_kernel('{platform}')"
        )

    def _split(self, values: list[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        arrays = []
        statics = []
        for p, v in zip(self._binder.params, values):
            if p.kind == "static":
                statics.append(v)
            else:
                arrays.append(v)
        return tuple(arrays), tuple(statics)

    def _merge(self, arrays: Sequence[Any], statics: Sequence[Any]) -> list[Any]:
        a = iter(arrays)
        s = iter(statics)
        out = []
        for p in self._binder.params:
            if p.kind == "static":
                v = next(s)
                if isinstance(v, tuple) and p.type.is_list:
                    v = list(v)
                out.append(v)
            else:
                out.append(next(a))
        return out

    def call_kernel(self, kernel: Callable[..., Any], values: list[Any]) -> Any:
        """Call ``kernel`` with schema-ordered ``values`` (positional + keyword-only)."""
        pos, kw = self._binder.split_call(values)
        return kernel(*pos, **kw)

    # -- factories -------------------------------------------------------------
    def _factory_device(self, values: list[Any]) -> Any:
        for p, v in zip(self._binder.params, values):
            if p.type.base == "Device" and v is not None:
                return v
        if not self._has_device_param or all(
            v is None for p, v in zip(self._binder.params, values) if p.type.base == "Device"
        ):
            raise RuntimeError(
                f"{self.name}: there were no Tensor inputs to this op (e.g. an empty list or None "
                "for every array). A factory op (one that takes no arrays and creates new ones) "
                "must take a `device: jax.Device` argument and be called with it"
            )
        return None

    def _call_factory(self, values: list[Any], device: Any) -> Any:
        dev = _dispatch.resolve_device(self.name, device)
        platform = _dispatch.platform_of_device(dev)
        kernel = self.kernels.for_platform(platform)
        if kernel is None:
            raise self._no_kernel_error(platform)
        if kernel.host:
            out = self._call_host_eager(kernel, values, [])
        else:
            arrays, statics = self._split(values)
            with jax.default_device(dev):
                out = self._jitted(arrays, (statics, _KEY[0]))
            out = self._finish_eager(out)
        return jax.tree_util.tree_map(lambda v: jax.device_put(v, dev) if isinstance(v, jax.Array) else v, out)

    # -- host, eager -------------------------------------------------------------
    def _call_host_eager(self, kernel: _dispatch.Kernel, values: list[Any], leaves: list[Any]) -> Any:
        if self._shape_check is not None:
            self._shape_check(values)
        if self._mutated:
            from jaxops import mutation

            return mutation.call_host_eager(self, kernel, values)
        np_values = [
            jax.tree_util.tree_map(_host.to_numpy, v) if p.is_array else v
            for p, v in zip(self._binder.params, values)
        ]
        pos, kw = self._binder.split_call(np_values)
        out = _host.call_kernel_eager(self.name, kernel.fn, pos, kw)
        device = _device_of_leaves(leaves)
        return self.wrap_outputs(out, device, np_values)

    def wrap_outputs(self, out: Any, device: Any, values: list[Any] | None = None) -> Any:
        """Check a host kernel's eager result against the schema and make arrays JAX arrays."""
        out = self.check_outputs(out)
        if values is not None:
            self._check_no_alias(out, values)

        # jnp.asarray places on the default device and costs about half of
        # jax.device_put(v, device); use the latter only for another device.
        default = _default_device()
        if (device is None and default is not None) or (device is not None and device == default):

            def leaf(v: Any) -> Any:
                return jnp.asarray(v) if isinstance(v, (np.ndarray, np.generic)) else v

        else:

            def leaf(v: Any) -> Any:
                return jax.device_put(v, device) if isinstance(v, (np.ndarray, np.generic)) else v

        if isinstance(out, np.ndarray):
            return leaf(out)
        return jax.tree_util.tree_map(leaf, out)

    def _check_no_alias(self, out: Any, values: list[Any]) -> None:
        ins = [np.asarray(v) for v in jax.tree_util.tree_leaves(values) if isinstance(v, np.ndarray)]
        if not ins:
            return
        for o in jax.tree_util.tree_leaves(out):
            if isinstance(o, np.ndarray) and any(
                np.may_share_memory(o, i) and np.shares_memory(o, i) for i in ins
            ):
                raise RuntimeError(
                    f"{self.name}: an output of the kernel aliases an input; outputs may not alias "
                    "inputs (return a copy, e.g. x.copy())"
                )

    def check_outputs(self, out: Any) -> Any:
        """Validate a kernel's return value against the schema's returns."""
        rets = self._fs.returns
        if not rets:
            if out is not None and out != ():
                raise RuntimeError(f"{self.name}: the schema declares no return (-> ()), but the kernel returned {type(out).__name__}")
            return None
        if self._fs.returns_tuple:
            if not isinstance(out, (tuple, list)) or len(out) != len(rets):
                got = f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
                raise RuntimeError(
                    f"{self.name}: the schema returns a tuple of {len(rets)} ({self._schema_str.split('->')[-1].strip()}), "
                    f"but the kernel returned {got}"
                )
            return tuple(_check_return(self.name, r.type, o, i) for i, (r, o) in enumerate(zip(rets, out)))
        return _check_return(self.name, rets[0].type, out, 0)

    def _finish_eager(self, out: Any) -> Any:
        """Eager results of non-Tensor returns (SymInt/float/bool) become Python scalars."""
        rets = self._fs.returns
        if not rets or all(r.type.base == "Tensor" for r in rets):
            return out
        if self._fs.returns_tuple:
            return tuple(_to_python(r.type, o) for r, o in zip(rets, out))
        return _to_python(rets[0].type, out)

    # -- fake ---------------------------------------------------------------------
    def active_fake(self) -> Callable[..., Any] | None:
        """The fake used for shape evaluation: profiles override, then registered, then derived."""
        from jaxops import profiles

        override = profiles._override_fake(self)
        if override is not None:
            return override
        if self._fake is not None:
            return self._fake[0]
        return self._derived_fake

    def abstract_eval(self, values: list[Any]) -> tuple[Any, list[Any]]:
        """Output ShapeDtypeStructs of a call, from the op's fake (cached per signature).

        Returns ``(outputs, dynamic_sizes)``.
        """
        fake = self.active_fake()
        if fake is None:
            raise RuntimeError(
                f"{self.name}: there is no fake impl registered for this op, so it cannot be traced "
                f"(jit/grad/vmap/eval_shape). Register one with @{self._opname}.register_fake "
                f"(or jaxops.register_fake('{self.name}')) that returns jax.ShapeDtypeStruct(s) of the "
                "outputs, or annotate the parameters and return with jaxtyping shapes"
            )
        arrays, statics = self._split(values)
        abstract = jax.tree_util.tree_map(_fake.to_abstract, arrays)
        key = None
        try:
            key = (jax.tree_util.tree_structure(abstract), tuple(
                (tuple(a.shape), str(a.dtype)) for a in jax.tree_util.tree_leaves(abstract)
            ), statics, _KEY[0])
            hash(key)
        except TypeError:
            key = None
        if key is not None and key in self._fake_cache:
            return self._fake_cache[key]

        def run(f: Callable[..., Any]) -> Any:
            def traced(arrs: Any) -> Any:
                vals = self._merge(arrs, statics)
                return _fake._materialize(self._normalize_fake_out(self.call_kernel(f, vals)))

            return jax.eval_shape(traced, abstract)

        from jaxops import dynamic as _dyn

        with _dyn.symbolic_scope_of(abstract):  # dynamic sizes share the inputs' symbolic scope
            result = _fake.run_fake(self.name, fake, run)
        if key is not None:
            self._fake_cache[key] = result
        return result

    def _normalize_fake_out(self, out: Any) -> Any:
        def leaf(v: Any) -> Any:
            if isinstance(v, bool):
                return jax.ShapeDtypeStruct((), jnp.bool_)
            if isinstance(v, int):
                return jax.ShapeDtypeStruct((), jnp.int32)
            if isinstance(v, float):
                return jax.ShapeDtypeStruct((), jnp.float32)
            return v

        return jax.tree_util.tree_map(leaf, out, is_leaf=lambda v: isinstance(v, jax.ShapeDtypeStruct))


_EXACT_TYPES = {
    "Tensor": "_ARRAY_EXACT",
    "float": "_FLOAT_EXACT",
    "SymInt": "_INT_EXACT",
    "int": "_INT_EXACT",
    "bool": "_BOOL_EXACT",
    "str": "_STR_EXACT",
}


def _make_fast_call(op: CustomOp) -> Callable[..., Any]:
    """Generate ``f(a0, a1, ...)`` for the op's hot path.

    Arguments whose exact type is the common one (a JAX array for ``Tensor``, a
    Python float for ``float``...) skip their checker; others go through it, so
    validation and its messages stay the same as the slow path.
    """
    from jaxops._binding import _EXACT_ARRAY_TYPES

    params = op._binder.params
    names = [f"a{i}" for i in range(len(params))]
    n = len(params)
    lines = [
        "def __call__(self, *args, **kwargs):",
        f"    if kwargs or len(args) != {n} or _profiles._RECORDING:",
        "        return self._slow_call(args, kwargs)",
        f"    {', '.join(names)}{',' if n == 1 else ''} = args",
    ]
    env: dict[str, Any] = {
        "_ARRAY_EXACT": _EXACT_ARRAY_TYPES,
        "_FLOAT_EXACT": frozenset({float}),
        "_INT_EXACT": frozenset({int}),
        "_BOOL_EXACT": frozenset({bool}),
        "_STR_EXACT": frozenset({str}),
        "_KEY": _KEY,
        "_profiles": profiles,
        "_DATA_DEPENDENT_ERRORS": _DATA_DEPENDENT_ERRORS,
        "_Tracer": _Tracer,
        "_note": _registry.note_traced,
    }
    for i, p in enumerate(params):
        env[f"c{i}"] = p.check
        exact = _EXACT_TYPES.get(p.type.base) if not p.type.is_list and not p.type.optional else None
        # a traced call records the traces around it (registry.note_traced), off the hot path
        note = f"\n        if isinstance(a{i}, _Tracer): _note(self)" if p.is_array else ""
        if exact is None:
            lines.append(f"    a{i} = c{i}(a{i})" + note.replace("\n    ", "\n"))
        else:
            lines.append(f"    if type(a{i}) not in {exact}:\n        a{i} = c{i}(a{i})" + note)
    arrays = "".join(f"a{i}, " for i in op._array_idx)
    statics = "".join(f"a{i}, " for i in op._static_idx)
    lines.append("    try:")
    lines.append(f"        return self._jitted(({arrays}), (({statics}), _KEY[0]))")
    lines.append("    except _DATA_DEPENDENT_ERRORS as e:")
    lines.append("        return self._eager_fallback(args, e)")
    exec("\n".join(lines), env)  # noqa: S102 - generated from the op's own schema
    return env["__call__"]


def _check_return(op_name: str, t: Any, v: Any, i: int) -> Any:
    if t.base == "Tensor":
        if t.is_list:
            if not isinstance(v, (list, tuple)):
                raise RuntimeError(f"{op_name}: return {i} must be a list of arrays (Tensor[]), got {type(v).__name__}")
            return [_check_return(op_name, _elem(t), e, i) for e in v]
        if v is None and t.optional:
            return None
        if not (is_array(v) or isinstance(v, (jax.ShapeDtypeStruct, np.generic))):
            raise RuntimeError(f"{op_name}: return {i} must be an array (Tensor), got {type(v).__name__}")
        return v
    return v


def _elem(t: Any) -> Any:
    import dataclasses

    return dataclasses.replace(t, is_list=False, list_size=None, optional=t.elem_optional)


def _to_python(t: Any, v: Any) -> Any:
    if t.base == "Tensor" or not isinstance(v, (jax.Array, np.ndarray, np.generic)):
        return v
    if t.base in ("SymInt", "int"):
        return int(v)
    if t.base == "float":
        return float(v)
    if t.base == "bool":
        return bool(v)
    return v.item() if hasattr(v, "item") else v


def _without_name(fs: FunctionSchema) -> FunctionSchema:
    import dataclasses

    return dataclasses.replace(fs, name="", overload_name="")


@functools.lru_cache(maxsize=1)
def _default_device_cached(_backend: str) -> Any:
    return jax.devices()[0]


def _default_device() -> Any:
    """Where ``jnp.asarray`` puts arrays; None when a default device is configured."""
    if jax.config.jax_default_device is not None:
        return None
    return _default_device_cached(jax.default_backend())


def _platform_of_leaves(leaves: list[Any]) -> str:
    for v in leaves:
        if isinstance(v, jax.Array):
            try:
                devs = v.devices()
            except Exception:  # noqa: BLE001 - deleted/donated arrays: fall back to default
                continue
            for d in devs:
                return _dispatch.platform_of_device(d)
    return _dispatch.platform_of_device(jax.devices()[0])


def _device_of_leaves(leaves: list[Any]) -> Any:
    for v in leaves:
        if isinstance(v, jax.Array):
            try:
                devs = list(v.devices())
            except Exception:  # noqa: BLE001
                continue
            if len(devs) == 1:
                return devs[0]
    return None


class ArrayLeaves:
    """The flat array leaves of one call's array arguments, and how to put new leaves back.

    Kernels are dispatched, called back and differentiated on flat leaves
    (``platform_dependent`` operands, ``pure_callback`` arguments, custom_vjp
    primals); :meth:`rebuild` turns leaves back into schema-ordered values.
    """

    __slots__ = ("leaves", "_treedef", "_idx", "_values")

    def __init__(self, op: CustomOp, values: list[Any]) -> None:
        self._idx = op._array_idx
        self._values = values
        self.leaves, self._treedef = jax.tree_util.tree_flatten([values[i] for i in self._idx])

    def rebuild(self, leaves: Sequence[Any], transform: Callable[[int, Any], Any] | None = None) -> list[Any]:
        """``values`` with the array arguments rebuilt from ``leaves`` (``transform(i, arg)`` applied)."""
        arrs = jax.tree_util.tree_unflatten(self._treedef, list(leaves))
        vals = list(self._values)
        for i, a in zip(self._idx, arrs):
            vals[i] = a if transform is None else transform(i, a)
        return vals


def _traced_entry(op: CustomOp, arrays: tuple[Any, ...], statics_key: tuple[Any, Any]) -> Any:
    """Body of the op's jitted callable: everything that happens under tracing."""
    statics, _ = statics_key
    values = op._merge(arrays, statics)
    if op._shape_check is not None:
        op._shape_check(values)
    from jaxops import autograd

    return autograd.apply(op, values)


def run_kernels(op: CustomOp, values: list[Any]) -> Any:
    """Run the op's kernels under tracing (no autograd wrapper): platform dispatch + host callbacks."""
    if op._mutated:
        from jaxops import mutation

        return mutation.run_traced(op, values)
    if op._vmap_rule is not None:
        from jaxops import vmap

        return vmap.run_with_rule(op, values, _run_kernels_plain)
    if op._sharding_rule is not None:
        from jaxops import sharding

        return sharding.run_partitioned(op, values, _run_kernels_plain)
    return _run_kernels_plain(op, values)


def _run_kernels_plain(op: CustomOp, values: list[Any]) -> Any:
    args = ArrayLeaves(op, values)

    def run(kernel: _dispatch.Kernel, operands: tuple[Any, ...]) -> Any:
        vals = args.rebuild(operands)
        if kernel.host:
            return run_host_traced(op, kernel, vals)
        return op.check_outputs(op.call_kernel(kernel.fn, vals))

    return op.kernels.select_traced(op.name, run, tuple(args.leaves))


def run_host_traced(op: CustomOp, kernel: _dispatch.Kernel, values: list[Any]) -> Any:
    """A host kernel under tracing: ``pure_callback`` with shapes from the fake."""
    out_shapes, dynamic = op.abstract_eval(values)
    if dynamic:
        from jaxops import dynamic as _dyn

        return _dyn.data_dependent_call(op, kernel, values, out_shapes)
    args = ArrayLeaves(op, values)

    def body(*np_flat: Any) -> Any:
        return op.check_outputs(op.call_kernel(kernel.fn, args.rebuild(np_flat)))

    method = op.vmap_method or "sequential"
    callback = _host.make_callback(op.name, body, out_shapes, vmap_method=method)
    out = jax.pure_callback(callback, out_shapes, *args.leaves, vmap_method=method)
    return _host.callback_results(out, args.leaves)


# ---------------------------------------------------------------------- custom_op
def _check_kwarg_only_tensors(qualname: str, schema: FunctionSchema) -> None:
    for a in schema.arguments:
        if a.kwarg_only and a.type.base == "Tensor":
            raise NotImplementedError(
                f"{qualname}: custom_op with kwarg-only Tensor args is not supported (parameter "
                f"'{a.name}'); make '{a.name}' a positional parameter (before the *)"
            )


def _check_schema_mutation(qualname: str, schema: FunctionSchema, mutates: str | frozenset[str]) -> None:
    declared = set(schema.mutated_arg_names)
    if mutates == "unknown":
        expected = {a.name for a in schema.arguments if a.type.base == "Tensor"}
    else:
        expected = set(mutates)
    if declared != expected:
        raise ValueError(
            f"{qualname}: the schema says the op mutates {sorted(declared) or 'nothing'}, but "
            f"mutates_args says the op mutates {sorted(expected) or 'nothing'}; make them agree"
        )


def _make_op(
    qualname: str,
    fn: Callable[..., Any],
    *,
    mutates_args: Any,
    device_types: Any,
    schema: str | None,
    host: bool,
    vmap_method: str | None,
    where: str,
) -> CustomOp:
    from jaxops.inference import infer_function_schema

    parse_qualname(qualname)
    mutates = normalize_mutates_args(qualname, mutates_args)
    if vmap_method is not None and vmap_method not in (
        "sequential",
        "sequential_unrolled",
        "expand_dims",
        "broadcast_all",
        "legacy_vectorized",
    ):
        raise ValueError(
            f"{qualname}: vmap_method must be one of 'sequential', 'sequential_unrolled', "
            f"'expand_dims', 'broadcast_all' (jax.pure_callback's values), got {vmap_method!r}"
        )
    if schema is None:
        fs = infer_function_schema(fn, mutates_args=mutates, op_name=qualname)
    else:
        fs = parse_schema(schema if schema.lstrip().startswith("(") or "::" in schema.split("(")[0] else schema)
        _check_schema_mutation(qualname, fs, mutates)
        names = [a.name for a in fs.arguments]
        try:
            import inspect

            py_names = [
                n for n, p in inspect.signature(fn).parameters.items()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
        except (TypeError, ValueError):
            py_names = names
        if py_names != names:
            raise ValueError(
                f"{qualname}: the schema's parameters {names} do not match the function's {py_names}"
            )
    _check_kwarg_only_tensors(qualname, fs)
    op = CustomOp(qualname, fs, vmap_method=vmap_method, where=where)
    op._py_fn = fn
    op._add_kernel(device_types, fn, host, where)
    from jaxops import annotations

    op._derived_fake = annotations.derive_fake(op, fn)
    op._shape_check = annotations.shape_checker(op, fn)
    op._rebuild()
    _registry.register(op)
    return op


def custom_op(
    name: str,
    fn: Callable[..., Any] | None = None,
    /,
    *,
    mutates_args: Iterable[str] | str,
    device_types: str | Sequence[str] | None = None,
    schema: str | None = None,
    host: bool = False,
    vmap_method: str | None = None,
) -> Any:
    """Declare a custom operator from a Python function (decorator or direct call).

    >>> import jax, jaxops
    >>> @jaxops.custom_op("demo::twice", mutates_args=())
    ... def twice(x: jax.Array) -> jax.Array:
    ...     return 2 * x
    >>> twice.name
    'demo::twice'

    ``host=True`` marks a NumPy body (it gets ``np.ndarray`` s); it then needs a
    fake (``register_fake``) to be traced.  Defining an op again under the same
    name replaces it.
    """
    where = _dispatch.caller_location()

    def inner(f: Callable[..., Any]) -> CustomOp:
        return _make_op(
            name,
            f,
            mutates_args=mutates_args,
            device_types=device_types,
            schema=schema,
            host=host,
            vmap_method=vmap_method,
            where=_dispatch.source_location(f) if where == "<unknown>" else where,
        )

    return inner if fn is None else inner(fn)


__all__ = ["CustomOp", "custom_op", "parse_qualname", "run_kernels", "run_host_traced"]
