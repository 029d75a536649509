"""Argument binding and validation against an op's schema.

The schema, not the Python signature, drives binding, so ops defined from a
schema string (``Library.define``) and ops defined from a function behave the
same.  Each parameter gets a precomputed checker, and the common call shape
(all arguments positional, no keywords) takes a fast path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxops.schema import Argument, FunctionSchema, SchemaType

MISSING = object()

ARRAY_TYPES: tuple[type, ...] = (jax.Array, np.ndarray)
_Ref = getattr(jax, "Ref", None)
if _Ref is not None and isinstance(_Ref, type):
    ARRAY_TYPES = (*ARRAY_TYPES, _Ref)


EXACT_ARRAY_TYPES = frozenset({type(jax.numpy.zeros(())), np.ndarray})


def is_array(x: Any) -> bool:
    return isinstance(x, ARRAY_TYPES)


class Param:
    """One schema argument, with its kind and checker."""

    __slots__ = ("name", "type", "kwarg_only", "default", "kind", "check", "index")

    def __init__(self, op_name: str, arg: Argument, index: int) -> None:
        self.name = arg.name
        self.type = arg.type
        self.kwarg_only = arg.kwarg_only
        self.index = index
        self.default = arg.default_value if arg.default is not None else MISSING
        t = arg.type
        if t.base == "Tensor":
            self.kind = "tensor_list" if t.is_list else "tensor"
        else:
            self.kind = "static"
        self.check = _make_checker(op_name, arg.name, t)

    @property
    def is_array(self) -> bool:
        return self.kind != "static"


def _type_error(op_name: str, name: str, t: SchemaType, v: Any) -> TypeError:
    return TypeError(
        f"{op_name}: argument '{name}' must be {_describe_type(t)} (schema type {t}), "
        f"got {type(v).__name__}"
    )


def _describe_type(t: SchemaType) -> str:
    base = {
        "Tensor": "an array (jax.Array or np.ndarray)",
        "SymInt": "an int",
        "int": "an int",
        "float": "a float",
        "bool": "a bool",
        "str": "a str",
        "Scalar": "a number (int, float or bool)",
        "ScalarType": "a dtype",
        "Device": "a jax.Device or a device string such as 'cpu'",
    }.get(t.base, t.base)
    if t.is_list:
        base = f"a list of {base.replace('an ', '').replace('a ', '')}s"
    if t.optional:
        base += " or None"
    return base


def _scalar_array(v: Any, kinds: str, to_python: Callable[[Any], Any], fail: Callable[[Any], Any]) -> Any:
    """A 0-d array given for a scalar parameter: a traced one stays (a dynamic operand), a concrete one becomes a Python number."""
    if getattr(v, "shape", None) != () or np.dtype(v.dtype).kind not in kinds:
        return fail(v)
    if isinstance(v, jax.core.Tracer):
        return v
    return to_python(v.item())


def _elem_checker(op_name: str, name: str, t: SchemaType) -> Callable[[Any], Any]:
    base = t.base

    def fail(v: Any) -> Any:
        raise _type_error(op_name, name, t, v)

    if base == "Tensor":

        def check(v: Any) -> Any:
            if type(v) in EXACT_ARRAY_TYPES or isinstance(v, ARRAY_TYPES):
                return v
            return fail(v)

    elif base in ("SymInt", "int"):

        def check(v: Any) -> Any:
            if type(v) is int:
                return v
            if isinstance(v, (jax.Array, np.ndarray)):
                return _scalar_array(v, "iu", int, fail)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                return fail(v)
            return int(v)

    elif base == "float":

        def check(v: Any) -> Any:
            if type(v) is float:
                return v
            if isinstance(v, (jax.Array, np.ndarray)):
                return _scalar_array(v, "fiu", float, fail)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                return fail(v)
            return float(v)

    elif base == "bool":

        def check(v: Any) -> Any:
            if isinstance(v, (jax.Array, np.ndarray)):
                return _scalar_array(v, "b", bool, fail)
            if not isinstance(v, (bool, np.bool_)):
                return fail(v)
            return bool(v)

    elif base == "str":

        def check(v: Any) -> Any:
            if not isinstance(v, str):
                return fail(v)
            return v

    elif base == "Scalar":

        def check(v: Any) -> Any:
            if not isinstance(v, (bool, int, float, complex, np.number, np.bool_)):
                return fail(v)
            return v.item() if isinstance(v, np.generic) else v

    elif base == "ScalarType":

        def check(v: Any) -> Any:
            if isinstance(v, (bool, int, float)):
                return fail(v)
            try:
                return np.dtype(jax.numpy.dtype(v))
            except TypeError:
                return fail(v)

    elif base == "Device":

        def check(v: Any) -> Any:
            if isinstance(v, (jax.Device, str)):
                return v
            return fail(v)

    else:

        def check(v: Any) -> Any:
            return v

    return check


def _make_checker(op_name: str, name: str, t: SchemaType) -> Callable[[Any], Any]:
    elem = _elem_checker(op_name, name, t)
    if t.is_list:
        elem_optional = t.elem_optional

        def check_list(v: Any) -> Any:
            if v is None:
                if t.optional:
                    return None
                raise _type_error(op_name, name, t, v)
            if not isinstance(v, (list, tuple)):
                raise _type_error(op_name, name, t, v)
            if t.list_size is not None and len(v) != t.list_size:
                raise TypeError(
                    f"{op_name}: argument '{name}' must have {t.list_size} elements (schema type {t}), "
                    f"got {len(v)}"
                )
            out = []
            for item in v:
                if item is None and elem_optional:
                    out.append(None)
                else:
                    out.append(elem(item))
            return out if t.base == "Tensor" else tuple(out)

        return check_list
    if t.optional:

        def check_opt(v: Any) -> Any:
            return None if v is None else elem(v)

        return check_opt
    return elem


class Binder:
    """Binds call arguments to an op's schema: returns values in schema order."""

    def __init__(self, op_name: str, schema: FunctionSchema) -> None:
        self.op_name = op_name
        self.params = [Param(op_name, a, i) for i, a in enumerate(schema.arguments)]
        self.by_name = {p.name: p for p in self.params}
        self.n_positional = sum(1 for p in self.params if not p.kwarg_only)
        self.n = len(self.params)
        self._checks = [p.check for p in self.params]

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if not kwargs and len(args) == self.n:
            if self.n == self.n_positional:
                return [c(v) for c, v in zip(self._checks, args)]
        return self._bind_slow(args, kwargs)

    def _bind_slow(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        op = self.op_name
        if len(args) > self.n_positional:
            raise TypeError(
                f"{op}() takes {self.n_positional} positional argument(s) but {len(args)} were given"
                + (
                    "; the rest are keyword-only"
                    if self.n_positional < self.n
                    else ""
                )
            )
        values: list[Any] = [MISSING] * self.n
        for i, v in enumerate(args):
            values[i] = v
        for k, v in kwargs.items():
            p = self.by_name.get(k)
            if p is None:
                raise TypeError(f"{op}() got an unexpected keyword argument '{k}'")
            if values[p.index] is not MISSING:
                raise TypeError(f"{op}() got multiple values for argument '{k}'")
            values[p.index] = v
        out = []
        for p, v in zip(self.params, values):
            if v is MISSING:
                if p.default is MISSING:
                    raise TypeError(f"{op}() missing required argument '{p.name}'")
                v = p.default
                if isinstance(v, list):
                    v = list(v)
            out.append(p.check(v))
        return out

    def split_call(self, values: list[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(positional, keyword_only)`` for calling a kernel with schema-ordered values."""
        pos = tuple(values[: self.n_positional])
        kw = {p.name: values[p.index] for p in self.params[self.n_positional :]}
        return pos, kw


__all__ = ["ARRAY_TYPES", "EXACT_ARRAY_TYPES", "MISSING", "Binder", "Param", "is_array"]
