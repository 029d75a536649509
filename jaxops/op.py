"""Custom operators: :func:`custom_op` and the :class:`CustomOp` facade.

A :class:`CustomOp` is a thin public face over two objects: its
:class:`~jaxops.definition.OpDefinition` (what the op is: schema, kernels,
fake, autograd info, rules; changed through validated ``set_*`` verbs) and its
:class:`~jaxops.pipeline.Pipeline` (how a call runs: binding, the eager
branches, one cached ``jax.jit`` callable named after the op, the nested
traced stages).  ``register_*`` methods validate where the user sees them and
store through the definition; calls go straight to the pipeline's entry.

>>> import jax, jaxops
>>> @jaxops.custom_op("demo::scale_add", mutates_args=())
... def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
...     return x + alpha * y
>>> scale_add.schema
'(Tensor x, Tensor y, float alpha=1.0) -> Tensor'
"""

from __future__ import annotations

import contextlib
import inspect
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

from jaxops import annotations, dispatch, fake, registry, sharding
from jaxops.binding import MISSING
from jaxops.definition import (
    RESERVED_NAMESPACES,
    OpDefinition,
    check_kwarg_only_tensors,
    check_schema_mutation,
    check_vmap_method,
    normalize_mutates_args,
    parse_qualname,
    python_parameter_names,
)
from jaxops.inference import infer_function_schema
from jaxops.pipeline import Pipeline
from jaxops.schema import FunctionSchema, parse_schema
from jaxops.tags import Tag


class CustomOp:
    """A custom operator.  Create one with :func:`custom_op` or :func:`jaxops.define`.

    >>> import jaxops
    >>> op = jaxops.define("opdoc::neg", "(Tensor x) -> Tensor")
    >>> op.name, op.schema
    ('opdoc::neg', '(Tensor x) -> Tensor')
    """

    def __init__(
        self,
        qualname: str,
        schema: FunctionSchema,
        *,
        overload: str = "",
        vmap_method: str | None = None,
        where: str = "<unknown>",
        tags: Any = (),
    ) -> None:
        self.definition = OpDefinition(
            qualname, schema, overload=overload, vmap_method=vmap_method, where=where, tags=tags
        )
        self._pipeline = Pipeline(self.definition)

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """The qualified name, e.g. ``"mylib::scale_add"`` (with ``.overload`` if any)."""
        return self.definition.name

    @property
    def qualname(self) -> str:
        return self.definition.qualname

    @property
    def namespace(self) -> str:
        return self.definition.namespace

    @property
    def overload_name(self) -> str:
        return self.definition.overload_name

    @property
    def schema(self) -> str:
        """The schema string without the name, e.g. ``"(Tensor x) -> Tensor"``."""
        return self.definition.schema_str

    @property
    def function_schema(self) -> FunctionSchema:
        return self.definition.function_schema

    @property
    def mutated_args(self) -> frozenset[str]:
        return self.definition.mutated_args

    @property
    def vmap_method(self) -> str | None:
        return self.definition.vmap_method

    @property
    def tags(self) -> tuple[Tag, ...]:
        """The op's :class:`jaxops.Tag` s (``custom_op(..., tags=...)``)."""
        return self.definition.tags

    @property
    def kernels(self) -> dispatch.KernelTable:
        return self.definition.kernels

    # Read by tests that predate ``op.definition`` (tests/test_profiles.py).
    @property
    def _fake(self) -> Any:
        f = self.definition.fake
        return None if f is None else (f.fn, f.where)

    @property
    def _derived_fake(self) -> Any:
        return self.definition.derived_fake

    @property
    def has_registered_fake(self) -> bool:
        """True when a fake was registered (``register_fake``); a fake derived from annotations does not count.

        :func:`jaxops.plan` traces a traceable op through this fake instead of its body.

        >>> # op.has_registered_fake  -> False until @op.register_fake
        """
        return self.definition.fake is not None

    def __repr__(self) -> str:
        d = self.definition
        kernels = ", ".join(f"{k}:{v.label}" for k, v in d.kernels.display_items()) or "none"
        parts = [f"kernels[{kernels}]"]
        parts += [label for label, on in (("fake", d.fake), ("autograd", d.autograd), ("vmap", d.vmap_rule)) if on]
        return f"<jaxops.CustomOp {d.name}{d.schema_str} {' '.join(parts)}>"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Ops pickle by name: unpickling looks the op up in the registry."""
        return registry.lookup, (self.name,)

    # ------------------------------------------------------------------- calling
    #: ``op(*args, **kwargs)`` runs the pipeline's entry (the generated hot path or the
    #: general one).  A property, read in C, so the call reaches the entry with the
    #: caller's arguments as they are: no extra Python frame, no repacking.
    __call__ = property(operator.attrgetter("_pipeline.entry"), doc="Call the op: ``op(x, y, alpha=2.0)``.")

    @property
    def __signature__(self) -> inspect.Signature:
        """The op's call signature, from its schema (``inspect.signature(op)``)."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return inspect.Signature([
            inspect.Parameter(
                p.name, kinds[p.kwarg_only], default=inspect.Parameter.empty if p.default is MISSING else p.default
            )
            for p in self.definition.binder.params
        ])

    def active_fake(self) -> Callable[..., Any] | None:
        """The fake used for shape evaluation: profiles override, then registered, then derived."""
        return fake.active_fake(self.definition)

    def abstract_eval(self, values: list[Any]) -> tuple[Any, list[Any]]:
        """``(output ShapeDtypeStructs, dynamic sizes)`` of a call with bound ``values``."""
        return fake.abstract_eval(self.definition, values)

    def call_kernel(self, kernel: Callable[..., Any], values: list[Any]) -> Any:
        """Call ``kernel`` with schema-ordered ``values`` (positional + keyword-only)."""
        return self.definition.call_kernel(kernel, values)

    def check_outputs(self, out: Any, *, host: bool = False) -> Any:
        """Validate a kernel's return value against the schema's returns."""
        return self.definition.check_outputs(out, host=host)

    # ------------------------------------------------------------- registration
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
        d = self.definition
        dispatch.normalize_device_types(d.name, device_types)
        where = dispatch.caller_location()

        def inner(f: Callable[..., Any]) -> Callable[..., Any]:
            kernel = dispatch.bind_to_op(self, f)  # e.g. jaxops.ffi.kernel binds to the op's schema
            d.set_kernel(device_types, kernel, host=d.kernels.any_host if host is None else host, where=where)
            return f

        return inner if fn is None else inner(fn)

    def register_fake(self, fn: Callable[..., Any] | None = None, /) -> Any:
        """Register the shape-only implementation (see :mod:`jaxops.fake`).

        >>> # @op.register_fake
        >>> # def _(x, y, alpha=1.0): return jax.ShapeDtypeStruct(x.shape, x.dtype)
        """
        where = dispatch.caller_location()

        def inner(f: Callable[..., Any]) -> Callable[..., Any]:
            self.definition.set_fake(f, where)
            return f

        return inner if fn is None else inner(fn)

    def set_kernel_enabled(self, device_type: str, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
        """Inside the block the kernel for ``device_type`` is enabled or disabled (the default kernel runs).

        >>> # with op.set_kernel_enabled("gpu", enabled=False): op(x)   # runs the default kernel
        """
        d = self.definition
        keys = dispatch.normalize_device_types(d.name, device_type)
        if keys == ("default",):
            raise ValueError(f"{d.name}: set_kernel_enabled needs a device type ('cpu', 'gpu', 'tpu'), got None")
        return self._kernels_disabled(keys, bool(enabled))

    @contextlib.contextmanager
    def _kernels_disabled(self, keys: tuple[str, ...], enabled: bool) -> Iterator[None]:
        d = self.definition
        before = d.kernels.disabled
        d.set_kernels_disabled(before - set(keys) if enabled else before | set(keys))
        try:
            yield
        finally:
            d.set_kernels_disabled(before)

    def register_autograd(
        self, backward: Callable[..., Any], /, *, setup_context: Callable[..., Any] | None = None
    ) -> None:
        """Register a backward formula (see :mod:`jaxops.autograd`).

        ``setup_context(ctx, inputs, output)`` (or ``(ctx, inputs, keyword_only_inputs,
        output)``) runs once per forward under differentiation; ``backward(ctx, *grads)``
        returns one gradient per positional input.

        >>> # op.register_autograd(lambda ctx, g: 2 * g)
        """
        self.definition.set_autograd(backward, setup_context, dispatch.caller_location())

    def register_vmap(self, fn: Callable[..., Any] | None = None, /) -> Any:
        """Register a batching rule ``fn(info, in_dims, *args, **kwargs) -> (out, out_dims)``.

        >>> # @op.register_vmap
        >>> # def _(info, in_dims, x): return op(x), in_dims[0]
        """

        def inner(f: Callable[..., Any]) -> Callable[..., Any]:
            self.definition.set_vmap_rule(f)
            return f

        return inner if fn is None else inner(fn)

    def register_sharding(self, fn: Any = None, /) -> Any:
        """Register a partitioning rule (``jax.experimental.custom_partitioning``).

        >>> # op.register_sharding("b n, n m -> b m")
        """

        def inner(f: Any) -> Any:
            if not self.definition.kernels.any_host:
                sharding.check_rule(self.name, f)
            self.definition.set_sharding_rule(f)
            return f

        return inner if fn is None else inner(fn)


# ---------------------------------------------------------------------- custom_op
def _make_op(
    qualname: str,
    fn: Callable[..., Any],
    *,
    mutates_args: Any,
    device_types: Any,
    schema: str | None,
    host: bool,
    vmap_method: str | None,
    tags: Any,
    where: str,
) -> CustomOp:
    parse_qualname(qualname)
    if "." in qualname.partition("::")[2]:
        base, _, overload_name = qualname.rpartition(".")
        raise ValueError(
            f"custom_op name {qualname!r} carries an overload ('.{overload_name}'); custom_op defines "
            f"one op per name: use {base!r}, or Library.define('{base.partition('::')[2]}.{overload_name}(...) -> ...') "
            "for an overload"
        )
    if schema is not None and not isinstance(schema, str):
        raise TypeError(
            f"{qualname}: custom_op(schema=...) must be a str like '(Tensor x) -> Tensor', got "
            f"{type(schema).__name__}"
        )
    mutates = normalize_mutates_args(qualname, mutates_args)
    check_vmap_method(qualname, vmap_method)
    if schema is None:
        fs = infer_function_schema(fn, mutates_args=mutates, op_name=qualname)
    else:
        fs = parse_schema(schema)
        check_schema_mutation(qualname, fs, mutates)
        names = [a.name for a in fs.arguments]
        py_names = python_parameter_names(fn)
        if py_names is not None and py_names != names:
            raise ValueError(
                f"{qualname}: the schema's parameters {names} do not match the function's {py_names}"
            )
    check_kwarg_only_tensors(qualname, fs)
    op = CustomOp(qualname, fs, vmap_method=vmap_method, where=where, tags=tags)
    d = op.definition
    d.set_kernel(device_types, fn, host=host, where=where)
    d.set_python_body(fn, annotations.derive_fake(d, fn), annotations.shape_checker(d, fn))
    registry.register(op)
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
    tags: Sequence[Tag] | Tag = (),
) -> Any:
    """Declare a custom operator from a Python function (decorator or direct call).

    >>> import jax, jaxops
    >>> @jaxops.custom_op("demo::twice", mutates_args=(), tags=(jaxops.Tag.pointwise,))
    ... def twice(x: jax.Array) -> jax.Array:
    ...     return 2 * x
    >>> twice.name, twice.tags
    ('demo::twice', (<Tag.pointwise: 'pointwise'>,))

    ``host=True`` marks a NumPy body (it gets ``np.ndarray`` s); it then needs a
    fake (``register_fake``) to be traced.  ``tags`` are :class:`jaxops.Tag`
    members stored on ``op.tags``.  Defining an op again under the same name
    replaces it.
    """
    where = dispatch.caller_location()

    def inner(f: Callable[..., Any]) -> CustomOp:
        return _make_op(
            name,
            f,
            mutates_args=mutates_args,
            device_types=device_types,
            schema=schema,
            host=host,
            vmap_method=vmap_method,
            tags=tags,
            where=dispatch.source_location(f) if where == "<unknown>" else where,
        )

    return inner if fn is None else inner(fn)


__all__ = ["RESERVED_NAMESPACES", "CustomOp", "custom_op", "parse_qualname"]
