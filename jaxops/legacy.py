"""The legacy custom-op surface (PyTorch's ``torch._custom_ops``), on ordinary jaxops ops.

PyTorch's older API declares an op from a body that raises ``NotImplementedError`` and
adds the pieces one call at a time: kernels per device type (``impl``), the fake
(``impl_abstract``) and a backward split into ``impl_save_for_backward`` and
``impl_backward`` (which returns a dict of gradients keyed by argument name).

Underneath, a legacy op is an ordinary jaxops op: it is defined with
:meth:`jaxops.Library.define` on a library the legacy op owns, its kernels and fake are
registered with :meth:`jaxops.Library.impl`, and its backward with
``op.register_autograd``.  So ``jax.jit``, ``jax.grad``, ``jax.vmap``,
``jax.eval_shape``, :func:`jaxops.opcheck` and :func:`jaxops.plan` work on it, and it is
reachable as ``jaxops.ops.<ns>.<name>``.

>>> import jax, jax.numpy as jnp
>>> from jaxops import legacy
>>> @legacy.custom_op("legacydoc::sin")
... def sin(x: jax.Array) -> jax.Array:
...     raise NotImplementedError
>>> @legacy.impl("legacydoc::sin")
... def _(x):
...     return jnp.sin(x)
>>> @legacy.impl_save_for_backward("legacydoc::sin")
... def _(inputs, output):
...     return inputs.x
>>> @legacy.impl_backward("legacydoc::sin")
... def _(ctx, saved, grad):
...     return {"x": grad * jnp.cos(saved)}
>>> float(jax.grad(sin)(0.0))
1.0
>>> sin._destroy()

Differences from PyTorch, all forced by JAX: ``device_types`` also accepts JAX's
``"gpu"``, ``"rocm"`` and ``"tpu"``; "requires_grad" is "inside ``jax.grad`` /
``jax.vjp`` / ``jax.jvp``", so the autograd errors come when the op is differentiated,
never from a plain call or ``jit``; keyword-only ``Tensor`` parameters are accepted (the
underlying jaxops op takes them as positional-or-keyword, kernels still get them by
keyword).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxops import dispatch as _dispatch
from jaxops import registry as _registry
from jaxops.library import Library, dispatch_keys
from jaxops.op import parse_qualname
from jaxops.registry import OpOverloadPacket
from jaxops.schema import FunctionSchema, SchemaParseError, parse_schema

#: Device types ``impl`` accepts (PyTorch's ``"cpu"``/``"cuda"`` plus JAX's platform names).
SUPPORTED_DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "gpu", "rocm", "tpu")

_LEGACY: dict[str, LegacyCustomOp] = {}


class InvalidSchemaError(ValueError, AssertionError):
    """A schema string given to :func:`custom_op` does not parse.

    Both a ``ValueError`` (jaxops' convention) and an ``AssertionError`` (what
    ``torch._custom_ops.custom_op`` raised), so code written against either catches it.
    """


def _location(fn: Callable[..., Any]) -> str:
    return _dispatch.source_location(fn)


def _caller() -> str:
    """``file.py:LINE`` of the first frame outside jaxops (the user's registration)."""
    import os

    pkg = os.path.dirname(os.path.abspath(__file__))
    frame = inspect.currentframe()
    try:
        while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == pkg:
            frame = frame.f_back
        return "<unknown>" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"
    finally:
        del frame


# ------------------------------------------------------------------------------ schemas
def _check_qualname(qualname: str) -> tuple[str, str]:
    if isinstance(qualname, str) and "::" in qualname and "." in qualname.split("::", 1)[1]:
        raise ValueError(
            f"legacy.custom_op({qualname!r}): expected the operator name to not contain an overload "
            f"name ('.{qualname.rsplit('.', 1)[1]}'); legacy custom ops have exactly one overload"
        )
    return parse_qualname(qualname)


def _check_legacy_schema(qualname: str, fs: FunctionSchema) -> None:
    """The definition-time rules of the legacy API: functional, no ``self``."""
    from jaxops.schema import is_functional_schema

    if any(a.name == "self" for a in fs.arguments):
        raise ValueError(
            f"legacy.custom_op({qualname!r}): an argument named 'self' is not supported (schema "
            f"{_anonymous(fs)}); rename it, e.g. 'x'"
        )
    if not is_functional_schema(fs):
        raise ValueError(
            f"legacy.custom_op({qualname!r}) only supports functional operators (ones that mutate no "
            f"input, return no view of one and return at least one value); got the schema "
            f"{_anonymous(fs)}. Use jaxops.custom_op(..., mutates_args=...) for mutating ops"
        )


def _anonymous(fs: FunctionSchema) -> str:
    return str(fs.with_name(""))


def _check_signature_matches(qualname: str, fs: FunctionSchema, fn: Callable[..., Any]) -> None:
    """An explicit schema: the Python signature must list the same parameters, no defaults."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(
                f"legacy.custom_op({qualname!r}): *args and **kwargs are not supported in the "
                f"signature of {fn.__name__} (parameter '{p.name}'); list every parameter of the "
                f"schema {_anonymous(fs)}"
            )
    for p in params:
        if p.default is not p.empty:
            raise ValueError(
                f"legacy.custom_op({qualname!r}): the signature of {fn.__name__} has default "
                f"arguments (parameter '{p.name}'); defaults belong in the schema "
                f"(e.g. 'int {p.name}=2'), not in the Python signature"
            )

    def describe(pos: list[str], kw: list[str]) -> str:
        return f"({', '.join(pos + (['*'] if kw else []) + kw)})"

    py_pos = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    py_kw = [p.name for p in params if p.kind == p.KEYWORD_ONLY]
    s_pos = [a.name for a in fs.arguments if not a.kwarg_only]
    s_kw = [a.name for a in fs.arguments if a.kwarg_only]
    if py_pos != s_pos or py_kw != s_kw:
        raise ValueError(
            f"legacy.custom_op({qualname!r}): expected {fn.__name__}'s signature to match the "
            f"schema {_anonymous(fs)} (same names, order and keyword-only parameters): the schema has "
            f"{describe(s_pos, s_kw)}, the function has {describe(py_pos, py_kw)}"
        )


def _underlying_schema(fs: FunctionSchema) -> FunctionSchema:
    """jaxops ops take arrays positionally: keyword-only arguments become positional
    when one of them is tensor-like (kernels still receive them by keyword)."""
    if not any(a.kwarg_only and a.type.is_tensor_like for a in fs.arguments):
        return fs
    args = tuple(dataclasses.replace(a, kwarg_only=False) for a in fs.arguments)
    return dataclasses.replace(fs, arguments=args)


def _adapt(fs: FunctionSchema, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` called with the declared keyword-only parameters by keyword."""
    kw_names = [a.name for a in fs.arguments if a.kwarg_only]
    if not kw_names or _underlying_schema(fs) is fs:
        return fn
    n_pos = len(fs.arguments) - len(kw_names)

    def adapted(*args: Any, **kwargs: Any) -> Any:
        positional = args[:n_pos]
        kwargs.update(zip(kw_names, args[n_pos:]))
        return fn(*positional, **kwargs)

    adapted.__wrapped__ = fn  # type: ignore[attr-defined]  # locations point at the user's fn
    return adapted


# ------------------------------------------------------------------------- gradients
def _is_tensor(v: Any) -> bool:
    return isinstance(v, (jax.Array, np.ndarray))


def _backward_checks_schema(qualname: str, fs: FunctionSchema) -> None:
    """Preconditions for registering a backward through the legacy API."""

    def error(detail: str) -> RuntimeError:
        return RuntimeError(
            f"Cannot use the legacy custom-op API (jaxops.legacy) to register a backward formula for "
            f"{detail}. Got operator {qualname} with schema: {_anonymous(fs)}"
        )

    if fs.is_mutable:
        raise error("a non-functional operator (it mutates an input)")
    if not fs.returns:
        raise error("an operator with no returns")
    if any(r.type.alias is not None and not r.type.alias.is_write for r in fs.returns):
        raise error("an operator that returns views")
    allowed = {"Tensor", "Tensor[]", "SymInt", "int", "float", "bool", "Scalar"}
    for r in fs.returns:
        spelled = f"{r.type.base}{'[]' if r.type.is_list else ''}"
        if r.type.optional or r.type.elem_optional or spelled not in allowed:
            raise error(f"an operator with a return not in {sorted(allowed)} (got {r.type})")
    keys = dispatch_keys(qualname)
    if "CompositeImplicitAutograd" in keys:
        raise RuntimeError(
            f"impl_backward/impl_save_for_backward: the operator {qualname} already has an "
            "implementation for every device type via a registration to CompositeImplicitAutograd. "
            "CompositeImplicitAutograd operators do not need an autograd formula: JAX differentiates "
            "the kernel's body"
        )


class _BackwardError:
    """Builds the messages of a backward whose result is malformed."""

    def __init__(self, op: LegacyCustomOp) -> None:
        self.op = op

    def __call__(self, what: str) -> RuntimeError:
        where = self.op._backward[1] if self.op._backward is not None else "<unknown>"
        return RuntimeError(
            f"In the backward function defined for {self.op.qualname} at {where} using the legacy "
            f"custom-op API (jaxops.legacy.impl_backward), {what}"
        )


def _validate_grads(op: LegacyCustomOp, grads: Any, values: dict[str, Any]) -> dict[str, Any]:
    """PyTorch's checks of a legacy backward's ``{arg name: gradient}`` dict."""
    error = _BackwardError(op)
    if not isinstance(grads, dict):
        raise error(
            f"expected the output of the backward function to be a dict but got {type(grads).__name__}"
        )
    expected = [a.name for a in op._declared.arguments if a.type.is_tensor_like]
    if set(grads) != set(expected):

        def show(names: Any) -> str:
            return "{" + ", ".join(repr(n) for n in sorted(names, key=str)) + "}"

        raise error(
            f"expected the returned grad_input dict to have keys {show(expected)} but got "
            f"{show(grads)}. The backward function must return a gradient (can be None) for each "
            "arg to the op that may be a Tensor or Sequence[Tensor]. Args declared to be "
            "non-Tensor-like types should not appear in the grad_input dict"
        )
    for name in expected:
        grad = grads[name]
        value = values[name]
        arg = op._declared.argument(name)
        if arg.type.is_list:
            if grad is None and value is None:
                continue
            if not isinstance(grad, (list, tuple)):
                raise error(
                    f"for input '{name}' expected the grad_input dict to hold a list of gradients "
                    f"but got object of type {type(grad).__name__}"
                )
            n = 0 if value is None else len(value)
            if len(grad) != n:
                raise error(
                    f"for input '{name}' expected the grad_input dict to hold a list of {n} "
                    f"gradients but got {len(grad)}"
                )
            for idx, (g, v) in enumerate(zip(grad, value or ())):
                if g is None:
                    continue
                if not _is_tensor(g):
                    raise error(
                        f"for input '{name}' expected the grad_input dict to hold a list of None or "
                        f"Tensor gradients but got object of {type(g).__name__} at index {idx}"
                    )
                if v is None:
                    raise error(
                        f"for input '{name}', got a Tensor as the gradient for the {idx}-th value but "
                        f"expected None because the {idx}-th value was not a Tensor (it was None)"
                    )
            continue
        if grad is None:
            continue
        if not _is_tensor(grad):
            raise error(
                f"got object of type {type(grad).__name__} as the gradient for input '{name}', but "
                "expected the gradient to be either None or a Tensor"
            )
        if value is None:
            raise error(
                f"got a Tensor as the gradient for input '{name}' but expected None as the gradient "
                f"because input '{name}' was not a Tensor (it was None)"
            )
    return grads


# ------------------------------------------------------------------------------ the op
class LegacyCustomOp(OpOverloadPacket):
    """An op of the legacy API: callable, and an ``OpOverloadPacket`` of its jaxops op.

    Every jaxops function that takes an op (``opcheck``, ``register_*``, ``plan``) accepts
    it; ``legacy_op.default`` is the underlying :class:`jaxops.CustomOp`.

    >>> import jax
    >>> from jaxops import legacy
    >>> @legacy.custom_op("legacydoc::neg", "(Tensor x) -> Tensor")
    ... def neg(x):
    ...     raise NotImplementedError
    >>> neg.schema
    '(Tensor x) -> Tensor'
    >>> neg._destroy()
    """

    def __init__(self, qualname: str, declared: FunctionSchema, lib: Library, *, owned: bool, where: str) -> None:
        ns, _, rest_name = qualname.partition("::")
        base, _, overload = rest_name.partition(".")
        super().__init__(f"{ns}::{base}")
        self._full = qualname  # "ns::name" or, for a handle on an overload, "ns::name.overload"
        self._overload_name = overload
        self._declared = declared
        self._lib = lib
        self._owned = owned
        self._where = where
        self._kernel_devices: dict[str, str] = {}  # platform -> "file.py:LINE"
        self._abstract: str | None = None
        self._save: tuple[Callable[..., Any], str] | None = None
        self._backward: tuple[Callable[..., Any], str] | None = None
        self._output_differentiability: list[bool] | None = None
        self._bad_output_diff: str | None = None
        self._destroyed = False
        self._target: Any = None  # the jaxops op a handle (owned=False) was made for

    def _target_is_current(self) -> bool:
        overloads = _registry.get(self._qualname) or {}
        return overloads.get(self._overload_name) is self._target

    @property
    def default(self) -> Any:
        """The underlying :class:`jaxops.CustomOp` (the overload this handle is for)."""
        op = (_registry.get(self._qualname) or {}).get(self._overload_name)
        if op is None:
            raise AttributeError(f"op {self._full!r} is no longer registered")
        return op

    # -- identity
    @property
    def qualname(self) -> str:
        """``"ns::name"``."""
        return self._full

    @property
    def name(self) -> str:
        """``"ns::name"`` (legacy ops have one overload)."""
        return self._full

    @property
    def schema(self) -> str:
        """The declared schema without the name, e.g. ``"(Tensor x) -> Tensor"``."""
        return _anonymous(self._declared)

    def __repr__(self) -> str:
        return f"<jaxops.legacy.LegacyCustomOp {self._full}{self.schema}>"

    def _check_alive(self) -> None:
        if self._destroyed:
            raise RuntimeError(f"legacy op {self._full} was destroyed (_destroy()); define it again")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._check_alive()
        if self._bad_output_diff is not None:
            raise RuntimeError(self._bad_output_diff)
        return self.default(*args, **kwargs)

    # -- kernels
    def impl(
        self, device_types: str | Sequence[str] = ("cpu", "cuda"), *, host: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the kernel for ``device_types``.

        The kernel is traceable JAX code; ``host=True`` marks a NumPy kernel (as
        :func:`jaxops.custom_op`'s ``host``), which then needs :meth:`impl_abstract` to be
        traced.

        >>> # @op.impl("cpu")
        >>> # def _(x): return jnp.sin(x)
        """
        self._check_alive()
        platforms = _normalize_legacy_devices(self._full, device_types)

        def inner(fn: Callable[..., Any]) -> Callable[..., Any]:
            where = _caller()
            op = self.default
            existing = _existing_kernels(op)
            for p in platforms:
                if p in self._kernel_devices or p in existing or "default" in existing:
                    earlier = self._kernel_devices.get(p) or existing.get(p) or existing.get("default")
                    raise RuntimeError(
                        f"legacy.impl({self._full!r}, device_types={device_types!r}): the op already "
                        f"has an implementation for device type '{p}' (registered at {earlier}); an op "
                        "has one kernel per device type"
                    )
            kernel = _adapt(self._declared, fn)
            for p in platforms:
                self._lib.impl(self._full, kernel, p, host=host)
                self._kernel_devices[p] = where
            return fn

        return inner

    def impl_abstract(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as the fake (shape-only) implementation.

        >>> # @op.impl_abstract()
        >>> # def _(x): return jax.ShapeDtypeStruct(x.shape, x.dtype)
        """
        self._check_alive()

        def inner(fn: Callable[..., Any]) -> Callable[..., Any]:
            if "CompositeImplicitAutograd" in dispatch_keys(self._full):
                raise RuntimeError(
                    f"legacy.impl_abstract({self._full!r}): the op has a CompositeImplicitAutograd "
                    "kernel, whose shapes come from tracing its body; it needs no abstract impl"
                )
            if self._abstract is not None:
                raise RuntimeError(
                    f"legacy.impl_abstract({self._full!r}): the op already has an abstract impl (a "
                    f"Meta implementation / fake) registered at {self._abstract}; an op has one"
                )
            try:
                self._lib.impl(self._full, _adapt(self._declared, fn), "Meta")
            except RuntimeError as e:
                raise RuntimeError(
                    f"legacy.impl_abstract({self._full!r}): the op already has an abstract impl (a "
                    f"Meta implementation / fake): {e}"
                ) from None
            self._abstract = _caller()
            return fn

        return inner

    # -- autograd
    def impl_save_for_backward(self) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``fn(inputs, output) -> saved``; ``inputs`` is a namedtuple of the arguments.

        Runs once per forward under differentiation; ``saved`` (any pytree) is passed to
        the backward.
        """
        self._check_alive()
        _backward_checks_schema(self._full, self._declared)

        def inner(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._save = (fn, _caller())
            self._install_autograd()
            return fn

        return inner

    def impl_backward(
        self, output_differentiability: list[bool] | None = None
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``fn(ctx, saved, *grads) -> {arg name: gradient}``.

        ``output_differentiability``: a list of bools, one per output, ``False`` for outputs
        that carry no gradient.
        """
        self._check_alive()
        _backward_checks_schema(self._full, self._declared)
        returns = self._declared.returns
        if output_differentiability is not None:
            bad = (
                not isinstance(output_differentiability, list)
                or not all(isinstance(d, bool) for d in output_differentiability)
                or len(output_differentiability) != len(returns)
            )
            if bad:
                raise RuntimeError(
                    f"impl_backward({self._full!r}, output_differentiability=...): expected "
                    "output_differentiability to be a list of bools with length equal to the number "
                    f"of outputs of this op ({len(returns)}), got {output_differentiability!r}"
                )

        def inner(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._backward = (fn, _caller())
            self._output_differentiability = output_differentiability
            self._bad_output_diff = None
            for idx, (d, r) in enumerate(zip(output_differentiability or (), returns)):
                if d and not r.type.is_tensor_like:
                    self._bad_output_diff = (
                        f"{self._full}: with output_differentiability={output_differentiability}, "
                        f"output {idx} has type {r.type}, which is not a Tensor, so it cannot be marked "
                        "as differentiable in output_differentiability (use False for it)"
                    )
            self._install_autograd()
            return fn

        return inner

    def _install_autograd(self) -> None:
        """(Re-)register the op's autograd from the legacy pieces (register_autograd)."""
        self.default.register_autograd(_legacy_backward(self), setup_context=_legacy_setup(self))

    # -- lifetime
    def _destroy(self) -> None:
        """Remove the op (if this API defined it) and every registration made through it."""
        if self._destroyed:
            return
        self._lib._destroy()
        self._destroyed = True
        if _LEGACY.get(self._full) is self:
            del _LEGACY[self._full]


def _legacy_setup(op: LegacyCustomOp) -> Callable[..., None]:
    save = op._save
    backward = op._backward
    bad = op._bad_output_diff
    names = [a.name for a in op._declared.arguments]
    Inputs = collections.namedtuple("Inputs", names)  # type: ignore[misc]  # noqa: PYI024

    def setup(ctx: Any, inputs: tuple[Any, ...], kw_inputs: dict[str, Any], output: Any) -> None:
        if backward is None:
            raise RuntimeError(
                f"Autograd has not been implemented for operator {op.qualname}. Please register "
                "a derivative formula with jaxops.legacy.impl_save_for_backward and "
                "jaxops.legacy.impl_backward, or call the op outside jax.grad / jax.vjp / jax.jvp"
            )
        if bad is not None:
            raise RuntimeError(bad)
        if save is None:
            raise RuntimeError(
                f"{op.qualname}: the legacy op has an impl_backward (at {backward[1]}) but we were "
                "unable to find a 'save_for_backward'; register one with "
                f"@jaxops.legacy.impl_save_for_backward({op.qualname!r})"
            )
        values = dict(zip(names, (*inputs, *(kw_inputs[n] for n in names[len(inputs):]))))
        ctx.legacy_values_are_none = tuple(
            (v is None) if not isinstance(v, (list, tuple)) else tuple(e is None for e in v)
            for v in values.values()
        )
        ctx.legacy_saved = save[0](Inputs(**values), output)

    return setup


def _legacy_backward(op: LegacyCustomOp) -> Callable[..., Any]:
    backward = op._backward
    diff = op._output_differentiability
    declared = op._declared
    n_pos = len(_underlying_schema(declared).positional_arguments)

    def run(ctx: Any, *grads: Any) -> tuple[Any, ...]:
        if backward is None:  # setup_context raises first; kept for a clear message regardless
            raise RuntimeError(f"Autograd has not been implemented for operator {op.qualname}")
        if diff is not None:
            grads = tuple(
                g if d else jax.tree_util.tree_map(jnp.zeros_like, g) for g, d in zip(grads, diff)
            )
        # values stand-ins for validation: None where the input was None
        values: dict[str, Any] = {}
        for a, none in zip(declared.arguments, ctx.legacy_values_are_none):
            if isinstance(none, tuple):
                values[a.name] = [None if n else 0 for n in none]
            else:
                values[a.name] = None if none else 0
        result = _validate_grads(op, backward[0](ctx, ctx.legacy_saved, *grads), values)
        out = []
        for a in _underlying_schema(declared).arguments[:n_pos]:
            g = result.get(a.name) if a.type.is_tensor_like else None
            out.append(list(g) if isinstance(g, tuple) else g)
        return tuple(out)

    return run


def _existing_kernels(op: Any) -> dict[str, str]:
    """``{platform or "default": "file.py:LINE"}`` of the kernels the op already has."""
    table = getattr(op, "kernels", None)
    if table is None:
        return {}
    return {key: kernel.where for key, kernel in table.items()}


def _normalize_legacy_devices(qualname: str, device_types: Any) -> tuple[str, ...]:
    items = (device_types,) if isinstance(device_types, str) else tuple(device_types)
    platforms: list[str] = []
    for item in items:
        if not isinstance(item, str) or item not in SUPPORTED_DEVICE_TYPES:
            raise ValueError(
                f"legacy.impl({qualname!r}, device_types={device_types!r}): got device type {item!r}, "
                f"but we only support device_type in {list(SUPPORTED_DEVICE_TYPES)}; use "
                "jaxops.register_kernel for anything else"
            )
        for p in _dispatch.normalize_device_types(qualname, item):
            if p not in platforms:
                platforms.append(p)
    if not platforms:
        raise ValueError(f"legacy.impl({qualname!r}): device_types is empty; we only support device_type in "
                         f"{list(SUPPORTED_DEVICE_TYPES)}")
    return tuple(platforms)


# --------------------------------------------------------------------- public functions
def custom_op(qualname: str, schema: str | None = None) -> Callable[[Callable[..., Any]], LegacyCustomOp]:
    """Declare an op from a function whose body raises ``NotImplementedError``.

    With ``schema`` (``"(Tensor x, int dim) -> Tensor"``) the function's signature must
    match it; without, the schema is inferred from the annotations (as
    :func:`jaxops.infer_schema`).  The function's name must be the op's name.  The op
    has no kernel until :func:`impl` registers one.  Defining an op that exists raises
    ``RuntimeError`` until it is destroyed (``op._destroy()``).

    >>> import jax
    >>> from jaxops import legacy
    >>> @legacy.custom_op("legacydoc::twice")
    ... def twice(x: jax.Array) -> jax.Array:
    ...     raise NotImplementedError
    >>> twice.schema
    '(Tensor x) -> Tensor'
    >>> twice._destroy()
    """
    ns, name = _check_qualname(qualname)
    declared: FunctionSchema | None = None
    if schema is not None:
        if not isinstance(schema, str):
            raise TypeError(f"legacy.custom_op({qualname!r}): schema must be a str, got {type(schema).__name__}")
        text = schema if not schema.lstrip().startswith("(") else f"{name}{schema}"
        try:
            declared = parse_schema(text)
        except SchemaParseError as e:
            raise InvalidSchemaError(f"Invalid function schema: {text}\n{e}") from None
        if declared.name and declared.op_name != name:
            raise ValueError(
                f"legacy.custom_op({qualname!r}): the schema names the op {declared.name!r}; expected {name!r}"
            )
        declared = declared.with_name(qualname)
        _check_legacy_schema(qualname, declared)

    def inner(fn: Callable[..., Any]) -> LegacyCustomOp:
        if not callable(fn):
            raise TypeError(f"legacy.custom_op({qualname!r}) decorates a function, got {type(fn).__name__}")
        if getattr(fn, "__name__", None) != name:
            raise ValueError(
                f"legacy.custom_op({qualname!r}): expected the function to have name {name!r} but got "
                f"{getattr(fn, '__name__', fn)!r}; rename the function or the op"
            )
        fs = declared
        if fs is None:
            from jaxops.inference import infer_function_schema

            fs = infer_function_schema(fn, mutates_args=(), op_name=qualname)
            _check_legacy_schema(qualname, fs)
        else:
            _check_signature_matches(qualname, fs, fn)
        if qualname in _LEGACY or _registry.get(qualname):
            raise RuntimeError(
                f"legacy.custom_op: tried to register an operator ({qualname}) with the same name as "
                f"an existing one multiple times; destroy the first (op._destroy() or "
                f"jaxops.legacy._destroy({qualname!r})) before defining it again"
            )
        lib = Library(ns, "FRAGMENT")
        lib.define(str(_underlying_schema(fs).with_name(name)))
        op = LegacyCustomOp(qualname, fs, lib, owned=True, where=_location(fn))
        _LEGACY[qualname] = op
        op._install_autograd()
        return op

    return inner


def get_op(qualname: str) -> LegacyCustomOp:
    """The legacy handle of ``qualname``: the legacy op, or a new handle on an existing jaxops op.

    A handle on an op defined elsewhere (``Library.define``, ``jaxops.define``) registers its
    kernels, fake and backward on a library of its own; ``_destroy()`` undoes those
    registrations (not the op).
    """
    op = _LEGACY.get(qualname)
    if op is not None and (op._owned or op._target_is_current()):
        return op
    if op is not None:  # a handle on an op that was destroyed or redefined since
        op._destroy()
    ns, _ = parse_qualname(qualname)  # handles may name an overload ("ns::op.overload")
    try:
        existing = _registry.lookup(qualname)
    except KeyError:
        raise ValueError(
            f"jaxops.legacy: could not find the operator {qualname}; define it with "
            "@jaxops.legacy.custom_op, jaxops.define or Library.define first"
        ) from None
    handle = LegacyCustomOp(
        qualname, existing.function_schema.with_name(qualname), Library(ns, "FRAGMENT"),
        owned=False, where=_caller(),
    )
    handle._target = existing
    _LEGACY[qualname] = handle
    return handle


def impl(
    qualname: str,
    *,
    device_types: str | Sequence[str] = ("cpu", "cuda"),
    func: Callable[..., Any] | None = None,
    host: bool = False,
) -> Any:
    """Register a kernel of ``qualname`` for ``device_types`` (decorator, or with ``func=``).

    ``host=True`` marks a NumPy kernel (see :meth:`LegacyCustomOp.impl`).

    >>> # @legacy.impl("mylib::foo", device_types="cpu")
    >>> # def _(x): return jnp.sin(x)
    """
    register = get_op(qualname).impl(device_types, host=host)
    return register if func is None else register(func)


def impl_abstract(qualname: str, func: Callable[..., Any] | None = None) -> Any:
    """Register the fake (shape-only) implementation of ``qualname``.

    A second one raises ``RuntimeError`` naming the first one's ``file.py:LINE``.

    >>> # @legacy.impl_abstract("mylib::foo")
    >>> # def _(x): return jax.ShapeDtypeStruct(x.shape, x.dtype)
    """
    register = get_op(qualname).impl_abstract()
    return register if func is None else register(func)


def impl_save_for_backward(qualname: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(inputs, output) -> saved`` for the backward of ``qualname``.

    >>> # @legacy.impl_save_for_backward("mylib::foo")
    >>> # def _(inputs, output): return inputs.x
    """
    return get_op(qualname).impl_save_for_backward()


def impl_backward(
    qualname: str, output_differentiability: list[bool] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(ctx, saved, *grads) -> {arg name: gradient}`` for ``qualname``.

    >>> # @legacy.impl_backward("mylib::foo")
    >>> # def _(ctx, saved, grad): return {"x": grad * jnp.cos(saved)}
    """
    return get_op(qualname).impl_backward(output_differentiability)


def _destroy(qualname: str) -> None:
    """Destroy the legacy op (or legacy handle) ``qualname``; no error if there is none."""
    op = _LEGACY.get(qualname)
    if op is not None:
        op._destroy()


__all__ = [
    "InvalidSchemaError",
    "LegacyCustomOp",
    "SUPPORTED_DEVICE_TYPES",
    "custom_op",
    "get_op",
    "impl",
    "impl_abstract",
    "impl_backward",
    "impl_save_for_backward",
]
