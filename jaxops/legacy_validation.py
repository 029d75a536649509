"""Validation for :mod:`jaxops.legacy`: what PyTorch's ``torch._custom_ops`` checks.

Op names, declared schemas (parsing, functional-only, no ``self``), the Python
signature against an explicit schema, the device types of ``impl``, the
preconditions of a backward, ``output_differentiability`` and the gradient dict a
legacy backward returns.  Also the schema adaptation between the declared schema
and the underlying jaxops op (keyword-only arrays).  Every error names the op.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxops import dispatch as _dispatch
from jaxops.library import dispatch_keys
from jaxops.op import parse_qualname
from jaxops.schema import FunctionSchema, SchemaParseError, parse_schema

__all__ = [
    "SUPPORTED_DEVICE_TYPES",
    "BackwardError",
    "InvalidSchemaError",
    "adapt",
    "anonymous",
    "backward_checks_schema",
    "check_legacy_schema",
    "check_no_kernel",
    "check_output_differentiability",
    "check_qualname",
    "check_signature_matches",
    "normalize_legacy_devices",
    "parse_declared_schema",
    "underlying_schema",
    "validate_grads",
]

#: Device types ``impl`` accepts (PyTorch's ``"cpu"``/``"cuda"`` plus JAX's platform names).
SUPPORTED_DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "gpu", "rocm", "tpu")


class InvalidSchemaError(ValueError, AssertionError):
    """A schema string given to :func:`custom_op` does not parse.

    Both a ``ValueError`` (jaxops' convention) and an ``AssertionError`` (what
    ``torch._custom_ops.custom_op`` raised), so code written against either catches it.
    """


# ------------------------------------------------------------------------------ schemas
def check_qualname(qualname: str) -> tuple[str, str]:
    """``(namespace, name)`` of a legacy op name (which may not name an overload)."""
    if isinstance(qualname, str) and "::" in qualname and "." in qualname.split("::", 1)[1]:
        raise ValueError(
            f"legacy.custom_op({qualname!r}): expected the operator name to not contain an overload "
            f"name ('.{qualname.rsplit('.', 1)[1]}'); legacy custom ops have exactly one overload"
        )
    return parse_qualname(qualname)


def check_legacy_schema(qualname: str, fs: FunctionSchema) -> None:
    """The definition-time rules of the legacy API: functional, no ``self``."""
    from jaxops.schema import is_functional_schema

    if any(a.name == "self" for a in fs.arguments):
        raise ValueError(
            f"legacy.custom_op({qualname!r}): an argument named 'self' is not supported (schema "
            f"{anonymous(fs)}); rename it, e.g. 'x'"
        )
    if not is_functional_schema(fs):
        raise ValueError(
            f"legacy.custom_op({qualname!r}) only supports functional operators (ones that mutate no "
            f"input, return no view of one and return at least one value); got the schema "
            f"{anonymous(fs)}. Use jaxops.custom_op(..., mutates_args=...) for mutating ops"
        )


def anonymous(fs: FunctionSchema) -> str:
    """The schema without its name, e.g. ``"(Tensor x) -> Tensor"``."""
    return str(fs.with_name(""))


def check_signature_matches(qualname: str, fs: FunctionSchema, fn: Callable[..., Any]) -> None:
    """An explicit schema: the Python signature must list the same parameters, no defaults."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(
                f"legacy.custom_op({qualname!r}): *args and **kwargs are not supported in the "
                f"signature of {fn.__name__} (parameter '{p.name}'); list every parameter of the "
                f"schema {anonymous(fs)}"
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
            f"schema {anonymous(fs)} (same names, order and keyword-only parameters): the schema has "
            f"{describe(s_pos, s_kw)}, the function has {describe(py_pos, py_kw)}"
        )


def underlying_schema(fs: FunctionSchema) -> FunctionSchema:
    """jaxops ops take arrays positionally: keyword-only arguments become positional
    when one of them is tensor-like (kernels still receive them by keyword)."""
    if not any(a.kwarg_only and a.type.is_tensor_like for a in fs.arguments):
        return fs
    args = tuple(dataclasses.replace(a, kwarg_only=False) for a in fs.arguments)
    return dataclasses.replace(fs, arguments=args)


def adapt(fs: FunctionSchema, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` called with the declared keyword-only parameters by keyword."""
    kw_names = [a.name for a in fs.arguments if a.kwarg_only]
    if not kw_names or underlying_schema(fs) is fs:
        return fn
    n_pos = len(fs.arguments) - len(kw_names)

    def adapted(*args: Any, **kwargs: Any) -> Any:
        positional = args[:n_pos]
        kwargs.update(zip(kw_names, args[n_pos:]))
        return fn(*positional, **kwargs)

    adapted.__wrapped__ = fn  # type: ignore[attr-defined]  # locations point at the user's fn
    return adapted


# ------------------------------------------------------------------------- gradients
def is_tensor(v: Any) -> bool:
    """Whether ``v`` is an array (a gradient that is not None)."""
    return isinstance(v, (jax.Array, np.ndarray))


def backward_checks_schema(qualname: str, fs: FunctionSchema) -> None:
    """Preconditions for registering a backward through the legacy API."""

    def error(detail: str) -> RuntimeError:
        return RuntimeError(
            f"Cannot use the legacy custom-op API (jaxops.legacy) to register a backward formula for "
            f"{detail}. Got operator {qualname} with schema: {anonymous(fs)}"
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


class BackwardError:
    """Builds the messages of a backward whose result is malformed."""

    def __init__(self, qualname: str, where: Callable[[], str]) -> None:
        self.qualname = qualname
        self.where = where  # the backward's "file.py:LINE", read when an error is built

    def __call__(self, what: str) -> RuntimeError:
        return RuntimeError(
            f"In the backward function defined for {self.qualname} at {self.where()} using the legacy "
            f"custom-op API (jaxops.legacy.impl_backward), {what}"
        )


def validate_grads(
    qualname: str, declared: FunctionSchema, where: Callable[[], str], grads: Any, values: dict[str, Any]
) -> dict[str, Any]:
    """PyTorch's checks of a legacy backward's ``{arg name: gradient}`` dict (``where``: the backward's location)."""
    error = BackwardError(qualname, where)
    if not isinstance(grads, dict):
        raise error(
            f"expected the output of the backward function to be a dict but got {type(grads).__name__}"
        )
    expected = [a.name for a in declared.arguments if a.type.is_tensor_like]
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
        arg = declared.argument(name)
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
                if not is_tensor(g):
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
        if not is_tensor(grad):
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



def normalize_legacy_devices(qualname: str, device_types: Any) -> tuple[str, ...]:
    """The platforms of ``impl``'s ``device_types`` (a str or a sequence of them), checked."""
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


def parse_declared_schema(qualname: str, name: str, schema: Any) -> FunctionSchema:
    """The explicit schema of :func:`jaxops.legacy.custom_op` (with or without the op name), checked."""
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
    check_legacy_schema(qualname, declared)
    return declared


def check_output_differentiability(qualname: str, output_differentiability: Any, returns: Any) -> None:
    """``impl_backward``'s ``output_differentiability``: None or one bool per output."""
    if output_differentiability is not None:
        bad = (
            not isinstance(output_differentiability, list)
            or not all(isinstance(d, bool) for d in output_differentiability)
            or len(output_differentiability) != len(returns)
        )
        if bad:
            raise RuntimeError(
                f"impl_backward({qualname!r}, output_differentiability=...): expected "
                "output_differentiability to be a list of bools with length equal to the number "
                f"of outputs of this op ({len(returns)}), got {output_differentiability!r}"
            )


def _existing_kernels(op: Any) -> dict[str, str]:
    """``{platform or "default": "file.py:LINE"}`` of the kernels the op already has."""
    table = getattr(op, "kernels", None)
    if table is None:
        return {}
    return {key: kernel.where for key, kernel in table.items()}


def check_no_kernel(
    qualname: str, device_types: Any, platforms: tuple[str, ...], registered: dict[str, str], op: Any
) -> None:
    """``impl``: none of ``platforms`` has a kernel yet (``registered``: the legacy API's own, by platform)."""
    existing = _existing_kernels(op)
    for p in platforms:
        if p in registered or p in existing or "default" in existing:
            earlier = registered.get(p) or existing.get(p) or existing.get("default")
            raise RuntimeError(
                f"legacy.impl({qualname!r}, device_types={device_types!r}): the op already "
                f"has an implementation for device type '{p}' (registered at {earlier}); an op "
                "has one kernel per device type"
            )
