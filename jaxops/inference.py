"""Schema inference: Python type annotations -> a PyTorch-spelled schema string.

The rules follow ``torch.library.infer_schema`` with JAX types in place of torch's::

    >>> import jax
    >>> def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
    ...     return x + alpha * y
    >>> infer_schema(scale_add, mutates_args=())
    '(Tensor x, Tensor y, float alpha=1.0) -> Tensor'
    >>> infer_schema(scale_add, mutates_args={"x"}, op_name="mylib::scale_add_")
    'mylib::scale_add_(Tensor(a0!) x, Tensor y, float alpha=1.0) -> Tensor'
"""

from __future__ import annotations

import collections
import collections.abc
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import jax.typing
import jaxtyping
import numpy as np

from jaxops import types as jtypes
from jaxops.schema import DTYPE_NAMES as _DTYPE_NAMES
from jaxops.schema import FunctionSchema, parse_schema
from jaxops.schema import render_string as _render_string

__all__ = ["infer_function_schema", "infer_schema"]

_UNKNOWN = "unknown"
_NoneType = type(None)
_UNION_ORIGINS = (typing.Union, types.UnionType)
_LIST_ORIGINS = (list, collections.abc.Sequence)

_VALID_TYPES_TEXT = (
    "jax.Array (also jnp.ndarray, np.ndarray, jaxtyping arrays), int, float, bool, str, "
    "jaxops.types.Number, a dtype (jnp.dtype, np.dtype, jax.typing.DTypeLike), jax.Device, "
    "Optional[T] / T | None of those, and Sequence[T] / list[T] of them "
    "(Sequence[Optional[jax.Array]] for optional elements)"
)
_VALID_RETURNS_TEXT = (
    "jax.Array, list[jax.Array], int, float, bool, jaxops.types.Number, "
    "a tuple[...] of those, or None"
)

# Names a string annotation may use even when the function's module did not import them
# (the counterpart of torch's "Tensor, dtype, device, types are assumed to be torch.*").
_FALLBACK_NAMESPACE: dict[str, Any] = {
    "jax": jax,
    "jnp": jnp,
    "np": np,
    "numpy": np,
    "jaxtyping": jaxtyping,
    "typing": typing,
    "Array": jax.Array,
    "Optional": typing.Optional,
    "Union": typing.Union,
    "Sequence": typing.Sequence,
    "List": typing.List,  # noqa: UP006
    "Tuple": typing.Tuple,  # noqa: UP006
    "Number": jtypes.Number,
    "Tensor": jtypes.Tensor,
    "DType": jtypes.DType,
    "Device": jtypes.Device,
    "DTypeLike": jax.typing.DTypeLike,
}
for _name in ("Float", "Int", "UInt", "Integer", "Bool", "Complex", "Inexact", "Num", "Shaped"):
    if hasattr(jaxtyping, _name):
        _FALLBACK_NAMESPACE[_name] = getattr(jaxtyping, _name)


class _InferError(Exception):
    """Internal: carries a message to be prefixed with the op and signature."""


# --------------------------------------------------------------------------- type helpers


def _union_args(t: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(t) in _UNION_ORIGINS:
        return typing.get_args(t)
    return None


def _is_number(t: Any) -> bool:
    args = _union_args(t)
    return args is not None and set(args) == {int, float, bool}


def _is_dtypelike(t: Any) -> bool:
    if t is np.dtype or typing.get_origin(t) is np.dtype:
        return True
    args = _union_args(t)
    return args is not None and set(args) == set(typing.get_args(jax.typing.DTypeLike))


def _is_array(t: Any) -> bool:
    if not isinstance(t, type):
        return False
    try:
        return issubclass(t, (jax.Array, np.ndarray, jaxtyping.AbstractArray))
    except TypeError:
        return False


def _is_device(t: Any) -> bool:
    try:
        return isinstance(t, type) and issubclass(t, jax.Device)
    except TypeError:
        return False


def _base_type(t: Any) -> str | None:
    """The schema spelling of a non-container annotation, or ``None``."""
    if t is int:
        return "SymInt"
    if t is float:
        return "float"
    if t is bool:
        return "bool"
    if t is str:
        return "str"
    if _is_array(t):
        return "Tensor"
    if _is_number(t):
        return "Scalar"
    if _is_dtypelike(t):
        return "ScalarType"
    if _is_device(t):
        return "Device"
    return None


def _type_repr(t: Any) -> str:
    """A short, readable spelling of an annotation for error messages."""
    if t is None or t is _NoneType:
        return "None"
    if t is Ellipsis:
        return "..."
    if isinstance(t, str):
        return repr(t)
    if isinstance(t, typing.ForwardRef):
        return repr(t.__forward_arg__)
    if t is jax.Array:
        return "jax.Array"
    if t is np.ndarray:
        return "np.ndarray"
    if _is_number(t):
        return "Number"
    if t is jax.typing.DTypeLike:
        return "DTypeLike"
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if origin in _UNION_ORIGINS:
        return " | ".join(_type_repr(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_repr(a) for a in args) if args else "()"
        return f"{_type_repr(origin)}[{inner}]"
    if isinstance(t, type):
        if t.__module__ in ("builtins", "jaxtyping") or t.__module__.startswith("jaxtyping."):
            return t.__qualname__
        if t.__module__.startswith("collections.abc"):
            return t.__qualname__
        return f"{t.__module__}.{t.__qualname__}"
    return repr(t)


class _Resolver:
    """Evaluates string / ``ForwardRef`` annotations in the function's module."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        target: Any = fn
        try:
            target = inspect.unwrap(fn)
        except ValueError:  # a __wrapped__ cycle
            pass
        while isinstance(target, functools.partial):
            target = target.func
        globs = getattr(target, "__globals__", None)
        if not isinstance(globs, dict):
            module = sys.modules.get(getattr(target, "__module__", None) or "")
            globs = vars(module) if module is not None else {}
        self.globals: dict[str, Any] = globs
        self.locals = collections.ChainMap(globs, _FALLBACK_NAMESPACE)

    def __call__(self, t: Any, _seen: tuple[str, ...] = ()) -> Any:
        text: str | None = None
        if isinstance(t, str):
            text = t
        elif isinstance(t, typing.ForwardRef):
            text = t.__forward_arg__
        if text is None:
            if typing.get_origin(t) is typing.Annotated:
                return self(typing.get_args(t)[0], _seen)
            return t
        if text in _seen:
            raise _InferError(
                f"unsupported type annotation {text!r}: it refers to itself "
                f"({' -> '.join(repr(s) for s in (*_seen, text))}); annotate with a type, e.g. jax.Array"
            )
        try:
            value = eval(text, self.globals, self.locals)  # noqa: S307 - annotation text
        except Exception as e:  # noqa: BLE001 - any failure means "cannot resolve"
            raise _InferError(
                f"unsupported type annotation {text!r}: it could not be resolved in the "
                f"function's module ({type(e).__name__}: {e}). With "
                "'from __future__ import annotations', every name used in an annotation "
                "must be importable at module scope."
            ) from None
        return self(value, (*_seen, text))


#: Public name of the annotation resolver (jaxops.annotations reads shapes with it).
AnnotationResolver = _Resolver


def _param_type(t: Any, resolve: _Resolver) -> str | None:
    """The schema type of a parameter annotation, or ``None`` when unsupported."""
    t = resolve(t)
    base = _base_type(t)
    if base is not None:
        return base
    args = _union_args(t)
    if args is not None:
        args = tuple(resolve(a) for a in args)
        rest = tuple(a for a in args if a is not _NoneType and a is not None)
        if len(rest) == len(args) or not rest:
            return None
        inner = rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007
        inner_s = _list_type(inner, resolve)
        if inner_s is not None:
            return inner_s + "?"
        inner_base = _base_type(inner)
        return None if inner_base is None else inner_base + "?"
    return _list_type(t, resolve)


def _list_type(t: Any, resolve: _Resolver) -> str | None:
    if typing.get_origin(t) not in _LIST_ORIGINS:
        return None
    args = typing.get_args(t)
    if len(args) != 1:
        return None
    elem = resolve(args[0])
    base = _base_type(elem)
    if base is not None:
        return base + "[]"
    eargs = _union_args(elem)
    if eargs is not None:
        eargs = tuple(resolve(a) for a in eargs)
        rest = tuple(a for a in eargs if a is not _NoneType and a is not None)
        if len(rest) == 1 and len(eargs) == 2 and _base_type(rest[0]) == "Tensor":
            return "Tensor?[]"
    return None


def _tuple_to_list(t: Any) -> Any:
    args = typing.get_args(t)
    if not args:
        return list
    if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis):
        return list[args[0]]
    return list[typing.Union[tuple(args)]]  # noqa: UP007


_RETURNABLE = ("SymInt", "float", "bool", "Tensor", "Scalar")


def _return_base(t: Any, resolve: _Resolver) -> str | None:
    t = resolve(t)
    base = _base_type(t)
    if base is not None:
        return base if base in _RETURNABLE else None
    if typing.get_origin(t) in _LIST_ORIGINS:
        args = typing.get_args(t)
        if len(args) == 1 and _is_array(resolve(args[0])):
            return "Tensor[]"
    return None


def _return_type(t: Any, resolve: _Resolver) -> str:
    if t is inspect.Signature.empty:
        raise _InferError("No return type annotation was provided. Please add one.")
    t = resolve(t)
    if t is None or t is _NoneType:
        return "()"
    if typing.get_origin(t) is tuple:
        args = typing.get_args(t)
        rendered = []
        for a in args:
            r = None if a is Ellipsis else _return_base(a, resolve)
            if r is None:
                raise _InferError(
                    f"Return has unsupported type {_type_repr(t)}. "
                    f"The valid types are: {_VALID_RETURNS_TEXT}."
                )
            rendered.append(r)
        if len(rendered) == 1:  # PyTorch spells a one-element tuple ((T))
            return f"(({rendered[0]}))"
        return "(" + ", ".join(rendered) + ")"
    r = _return_base(t, resolve)
    if r is None:
        raise _InferError(
            f"Return has unsupported type {_type_repr(t)}. "
            f"The valid types are: {_VALID_RETURNS_TEXT}."
        )
    return r


def _is_dtype_value(v: Any) -> bool:
    if isinstance(v, np.dtype):
        return True
    if isinstance(v, type):
        try:
            if issubclass(v, np.generic):
                return True
        except TypeError:
            return False
        return isinstance(getattr(v, "dtype", None), np.dtype)  # jnp.float32 and friends
    return False


def _render_default(v: Any, param: str) -> str:
    if v is None:
        return "None"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(float(v))
    if isinstance(v, str):
        return _render_string(v)
    if isinstance(v, jax.Device):
        return _render_string(f"{v.platform}:{v.id}")
    if _is_dtype_value(v):
        name = np.dtype(v).name
        if name in _DTYPE_NAMES:
            return name
        raise _InferError(
            f"Parameter {param} has an unsupported dtype default {name!r}; supported dtypes "
            f"are {', '.join(sorted(set(_DTYPE_NAMES.values())))}."
        )
    if isinstance(v, (list, tuple)):
        items = []
        for item in v:
            if item is not None and not isinstance(
                item, (bool, int, float, str, np.bool_, np.integer, np.floating)
            ):
                break
            items.append(_render_default(item, param))
        else:
            return "[" + ", ".join(items) + "]"
    raise _InferError(
        f"Parameter {param} has an unsupported default value type {type(v)} "
        f"(value {v!r}); defaults must be None, a bool, int, float or str, a dtype, a "
        "jax.Device, or a list/tuple of numbers."
    )


def _op_label(fn: Any, op_name: str | None) -> str:
    if op_name is not None:
        return op_name
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if qualname is None:
        return repr(fn)
    return f"{module}.{qualname}" if module else qualname


def _normalize_mutates_args(mutates_args: Any, label: str) -> str | tuple[str, ...]:
    if isinstance(mutates_args, str):
        if mutates_args != _UNKNOWN:
            raise ValueError(
                f"infer_schema({label}): mutates_args must either be a sequence of the names "
                f"of the arguments that are mutated or the string 'unknown', got "
                f"{mutates_args!r}."
            )
        return _UNKNOWN
    if not isinstance(mutates_args, Iterable):
        raise ValueError(
            f"infer_schema({label}): mutates_args must either be a sequence of the names of "
            f"the arguments that are mutated or the string 'unknown', got {mutates_args!r}."
        )
    names = tuple(mutates_args)
    for n in names:
        if not isinstance(n, str):
            raise ValueError(
                f"infer_schema({label}): mutates_args must contain argument names (str), got {n!r}."
            )
    return names


def infer_schema(
    fn: Callable[..., Any],
    /,
    *,
    mutates_args: Iterable[str] | str,
    op_name: str | None = None,
) -> str:
    """Infer a schema string from ``fn``'s type annotations (``torch.library.infer_schema``).

    ``mutates_args`` names the parameters ``fn`` mutates (only array parameters may be), or is
    ``"unknown"`` to mark every array parameter. ``op_name`` (e.g. ``"mylib::foo"``) is put in
    front of the argument list. Raises ``ValueError`` naming the op and the parameter for
    anything that cannot be expressed.

    >>> import jax
    >>> from typing import Optional
    >>> def f(x: jax.Array, n: Optional[int] = None, *, out: jax.Array) -> None: ...
    >>> infer_schema(f, mutates_args={"out"}, op_name="myop")
    'myop(Tensor x, SymInt? n=None, *, Tensor(a2!) out) -> ()'
    """
    label = _op_label(fn, op_name)
    mutates = _normalize_mutates_args(mutates_args, label)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise ValueError(f"infer_schema({label}): cannot read the signature of {fn!r}: {e}") from e
    resolve = _Resolver(fn)

    def fail(what: str) -> ValueError:
        return ValueError(f"infer_schema({label}): {what} Got func with signature {sig}.")

    params: list[str] = []
    seen: set[str] = set()
    saw_kwarg_only = False
    P = inspect.Parameter
    try:
        for idx, (name, param) in enumerate(sig.parameters.items()):
            if param.kind is P.VAR_POSITIONAL:
                raise _InferError(
                    f"Parameter *{name} is variadic (varargs); custom ops do not support "
                    "positional-only args, varargs, or varkwargs."
                )
            if param.kind is P.VAR_KEYWORD:
                raise _InferError(
                    f"Parameter **{name} is variadic (varkwargs); custom ops do not support "
                    "positional-only args, varargs, or varkwargs."
                )
            if param.kind is P.POSITIONAL_ONLY:
                raise _InferError(
                    f"Parameter {name} is positional-only; custom ops do not support "
                    "positional-only args, varargs, or varkwargs."
                )
            if param.kind is P.KEYWORD_ONLY and not saw_kwarg_only:
                params.append("*")
                saw_kwarg_only = True
            if param.annotation is P.empty:
                raise _InferError(f"Parameter {name} must have a type annotation.")
            try:
                schema_type = _param_type(param.annotation, resolve)
            except _InferError as e:
                raise _InferError(f"Parameter {name} has an {e}") from None
            if schema_type is None:
                ann = resolve(param.annotation)
                if typing.get_origin(ann) is tuple or ann is tuple:
                    list_type = _tuple_to_list(ann)
                    example = ""
                    try:
                        if _param_type(list_type, resolve) is not None:
                            example = f"For example, {_type_repr(list_type)}. "
                    except _InferError:
                        pass
                    raise _InferError(
                        f"Parameter {name} has unsupported type {_type_repr(ann)}. We do not "
                        "support Tuple inputs in schema. As a workaround, please try to use "
                        f"list instead. {example}The valid types are: {_VALID_TYPES_TEXT}."
                    )
                raise _InferError(
                    f"Parameter {name} has unsupported type {_type_repr(ann)}. "
                    f"The valid types are: {_VALID_TYPES_TEXT}."
                )
            mutated = False
            if mutates == _UNKNOWN:
                mutated = schema_type.startswith("Tensor")
            elif name in mutates:
                if not schema_type.startswith("Tensor"):
                    raise _InferError(
                        f"Parameter {name} is in mutates_args but only arrays (jax.Array) or "
                        "collections of arrays can be mutated."
                    )
                mutated = True
            if mutated:
                schema_type = f"Tensor(a{idx}!){schema_type[len('Tensor') :]}"
            seen.add(name)
            if param.default is P.empty:
                params.append(f"{schema_type} {name}")
            else:
                params.append(f"{schema_type} {name}={_render_default(param.default, name)}")
        if mutates != _UNKNOWN:
            missing = [n for n in dict.fromkeys(mutates) if n not in seen]
            if missing:
                raise _InferError(
                    f"{set(missing)} in mutates_args were not found in the custom op's "
                    "signature. mutates_args should contain the names of all args that the "
                    "custom op mutates, or just the string 'unknown' if you don't know."
                )
        ret = _return_type(sig.return_annotation, resolve)
    except _InferError as e:
        raise fail(str(e)) from None
    prefix = op_name if op_name is not None else ""
    return f"{prefix}({', '.join(params)}) -> {ret}"


def infer_function_schema(
    fn: Callable[..., Any],
    *,
    mutates_args: Iterable[str] | str,
    op_name: str | None = None,
) -> FunctionSchema:
    """:func:`infer_schema`, parsed into a :class:`~jaxops.schema.FunctionSchema`.

    >>> import jax
    >>> def f(x: jax.Array, k: int = 2) -> jax.Array: ...
    >>> s = infer_function_schema(f, mutates_args=(), op_name="mylib::f")
    >>> s.name, s.arguments[1].default_value
    ('mylib::f', 2)
    """
    text = infer_schema(fn, mutates_args=mutates_args, op_name=op_name)
    try:
        return parse_schema(text)
    except ValueError as e:
        raise ValueError(
            f"infer_schema({_op_label(fn, op_name)}): the inferred schema {text!r} is not "
            f"valid: {e}"
        ) from e


def tuple_to_list(tuple_type: Any) -> Any:
    """The ``typing.List`` a ``typing.Tuple`` annotation corresponds to (as PyTorch's).

    ``Tuple[int, float]`` -> ``List[Union[int, float]]``; ``Tuple[T, ...]`` and
    ``Tuple[T]`` -> ``List[T]``; a bare ``Tuple`` -> ``List``.  Schema inference suggests
    it when a parameter is annotated with a tuple (schemas have lists, not tuples).

    >>> from typing import List, Tuple, Union
    >>> tuple_to_list(Tuple[int, float]) == List[Union[int, float]]
    True
    >>> tuple_to_list(Tuple[int, ...]) == List[int]
    True
    """
    args = getattr(tuple_type, "__args__", None)
    if tuple_type is typing.Tuple or tuple_type is tuple or not args or args == ((),):  # noqa: UP006
        return typing.List  # noqa: UP006
    if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis):
        return typing.List[args[0]]  # noqa: UP006
    return typing.List[typing.Union[tuple(args)]]  # noqa: UP006, UP007
