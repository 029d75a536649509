"""The data model of operator schemas: :class:`FunctionSchema`, :class:`Argument`,
:class:`Return`, :class:`SchemaType`, :class:`AliasInfo`, and their canonical text (``str()``).

Also the meaning of default values: :func:`convert_default` turns a parsed default literal
into the Python value for its type (``Argument.default_value``; the parser uses it to reject
bad defaults).  Parse schema text with :func:`jaxops.schema.parse_schema`.

>>> str(Argument("k", SchemaType("int", is_list=True, list_size=2), "1"))
'int[2] k=1'
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from jaxops.schema_lexer import DefaultError, DefaultNode, SchemaParseError, parse_default_text

# Torch dtype names (as they appear in schema defaults) -> jax.numpy attribute names.
_DTYPE_NAMES: dict[str, str] = {
    "float32": "float32",
    "float": "float32",
    "float64": "float64",
    "double": "float64",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "complex64": "complex64",
    "cfloat": "complex64",
    "complex128": "complex128",
    "cdouble": "complex128",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2",
    "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz",
}
#: Public name of the dtype spelling table (schema name -> jnp attribute).
DTYPE_NAMES = _DTYPE_NAMES

# Enum-valued defaults spelled as names in PyTorch schemas (``int reduction=Mean``).
_INT_ENUM_NAMES: dict[str, int] = {"Mean": 1, "Sum": 2}

_INT_TEXT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class AliasInfo:
    """An alias annotation: ``(a!)`` is ``AliasInfo("a", True)``, ``(a)`` is ``AliasInfo("a", False)``.

    >>> str(AliasInfo("a0", True))
    'a0!'
    """

    set: str
    is_write: bool = False

    def __str__(self) -> str:
        return self.set + ("!" if self.is_write else "")


@dataclass(frozen=True)
class SchemaType:
    """The type of one argument or return, e.g. ``Tensor(a2!)[]`` or ``SymInt[]?``.

    ``optional`` is the trailing ``?`` (for a list: the list itself is optional, ``T[]?``);
    ``elem_optional`` is the ``?`` before ``[]`` (``Tensor?[]``).

    >>> str(SchemaType("Tensor", is_list=True, elem_optional=True, alias=AliasInfo("a3", True)))
    'Tensor(a3!)?[]'
    """

    base: str
    optional: bool = False
    is_list: bool = False
    list_size: int | None = None
    elem_optional: bool = False
    alias: AliasInfo | None = None

    def __post_init__(self) -> None:
        if not self.is_list and (self.list_size is not None or self.elem_optional):
            raise ValueError(
                f"SchemaType({self.base!r}): list_size / elem_optional need is_list=True"
            )

    @property
    def is_tensor_like(self) -> bool:
        """``True`` for ``Tensor`` and every optional / list form of it."""
        return self.base == "Tensor"

    @property
    def is_mutable(self) -> bool:
        """``True`` when the type carries a write alias annotation (``Tensor(a!)``)."""
        return self.alias is not None and self.alias.is_write

    @property
    def element(self) -> SchemaType:
        """The element type of a list type (``Tensor?[]`` -> ``Tensor?``); ``self`` otherwise."""
        if not self.is_list:
            return self
        return SchemaType(self.base, optional=self.elem_optional, alias=self.alias)

    def __str__(self) -> str:
        out = self.base
        if self.alias is not None:
            out += f"({self.alias})"
        if self.is_list:
            if self.elem_optional:
                out += "?"
            out += "[" + ("" if self.list_size is None else str(self.list_size)) + "]"
        if self.optional:
            out += "?"
        return out


@dataclass(frozen=True)
class Argument:
    """One parameter: ``float alpha=1.0`` is ``Argument("alpha", SchemaType("float"), "1.0")``.

    ``default`` is the default exactly as written in the schema text (``None`` when there is
    no default; the text ``"None"`` when the default *is* ``None``). ``default_value`` is the
    Python value.

    >>> Argument("d", SchemaType("ScalarType"), "float32").default_value
    dtype('float32')
    """

    name: str
    type: SchemaType
    default: str | None = None
    kwarg_only: bool = False

    @property
    def has_default(self) -> bool:
        """Whether the argument has a default value."""
        return self.default is not None

    @property
    def default_value(self) -> Any:
        """The default as a Python value; raises ``ValueError`` when there is none."""
        if self.default is None:
            raise ValueError(f"argument {self.name!r} has no default value")
        node = parse_default_text(self.default)
        try:
            return convert_default(self.type, node)
        except DefaultError as e:
            raise SchemaParseError(
                f"invalid default for argument {self.name!r}: {e.message}", self.default, e.pos
            ) from None

    def __str__(self) -> str:
        out = f"{self.type} {self.name}"
        if self.default is not None:
            out += f"={self.default}"
        return out


@dataclass(frozen=True)
class Return:
    """One result: ``Tensor values`` is ``Return(SchemaType("Tensor"), "values")``.

    >>> str(Return(SchemaType("Tensor", alias=AliasInfo("a", True))))
    'Tensor(a!)'
    """

    type: SchemaType
    name: str | None = None

    def __str__(self) -> str:
        return str(self.type) if self.name is None else f"{self.type} {self.name}"


@dataclass(frozen=True)
class FunctionSchema:
    """A parsed operator schema.

    ``name`` is ``""`` for an anonymous schema (``"(Tensor x) -> Tensor"``) and may be
    qualified (``"mylib::foo"``); ``overload_name`` is ``""`` when there is none.
    ``returns_tuple`` says whether the results were written as a tuple (``-> (A, B)``,
    ``-> (A)``, ``-> ((A))``, ``-> ()``) rather than a single ``-> A``.

    >>> from jaxops.schema import parse_schema
    >>> s = parse_schema("mylib::foo.out(Tensor x, *, Tensor(a!) out) -> ()")
    >>> s.qualname, s.namespace, s.op_name, s.mutated_arg_names
    ('mylib::foo.out', 'mylib', 'foo', ('out',))
    """

    name: str
    overload_name: str
    arguments: tuple[Argument, ...]
    returns: tuple[Return, ...]
    returns_tuple: bool
    # How a one-element tuple is spelled: ``((A))`` (what PyTorch prints; the default) or
    # ``(A)``. Only affects ``str()``; not part of equality.
    single_tuple_double_parens: bool = field(default=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments", tuple(self.arguments))
        object.__setattr__(self, "returns", tuple(self.returns))
        if not self.returns_tuple and len(self.returns) != 1:
            raise ValueError(
                "FunctionSchema: returns_tuple=False needs exactly one return, "
                f"got {len(self.returns)}"
            )
        seen: set[str] = set()
        for arg in self.arguments:
            if arg.name in seen:
                raise ValueError(f"FunctionSchema {self.name!r}: duplicate argument {arg.name!r}")
            seen.add(arg.name)

    # -- names
    @property
    def qualname(self) -> str:
        """``"ns::name.overload"`` (or ``"ns::name"`` without an overload)."""
        return self.name + (f".{self.overload_name}" if self.overload_name else "")

    @property
    def namespace(self) -> str:
        """The part of ``name`` before ``::`` (``""`` when unqualified)."""
        return self.name.split("::", 1)[0] if "::" in self.name else ""

    @property
    def op_name(self) -> str:
        """``name`` without its namespace."""
        return self.name.split("::", 1)[1] if "::" in self.name else self.name

    def with_name(self, name: str, overload_name: str = "") -> FunctionSchema:
        """A copy with another (possibly qualified) name and overload."""
        return dataclasses.replace(self, name=name, overload_name=overload_name)

    # -- arguments
    @property
    def positional_arguments(self) -> tuple[Argument, ...]:
        """Arguments before the ``*``."""
        return tuple(a for a in self.arguments if not a.kwarg_only)

    @property
    def kwarg_only_arguments(self) -> tuple[Argument, ...]:
        """Arguments after the ``*``."""
        return tuple(a for a in self.arguments if a.kwarg_only)

    @property
    def argument_names(self) -> tuple[str, ...]:
        """Every argument name, in order."""
        return tuple(a.name for a in self.arguments)

    def argument(self, name: str) -> Argument:
        """The argument called ``name`` (``KeyError`` when there is none)."""
        for arg in self.arguments:
            if arg.name == name:
                return arg
        raise KeyError(f"{self.qualname or 'schema'} has no argument {name!r}")

    @property
    def mutated_arg_names(self) -> tuple[str, ...]:
        """Names of the arguments whose alias annotation is a write (``Tensor(a!)``)."""
        return tuple(a.name for a in self.arguments if a.type.is_mutable)

    @property
    def is_mutable(self) -> bool:
        """Whether any argument is mutated."""
        return bool(self.mutated_arg_names)

    def __str__(self) -> str:
        parts: list[str] = []
        star = False
        for arg in self.arguments:
            if arg.kwarg_only and not star:
                parts.append("*")
                star = True
            parts.append(str(arg))
        rets = ", ".join(str(r) for r in self.returns)
        if self.returns_tuple:
            if len(self.returns) == 1 and self.single_tuple_double_parens:
                rets = f"(({rets}))"
            else:
                rets = f"({rets})"
        return f"{self.qualname}({', '.join(parts)}) -> {rets}"


def _num(node: DefaultNode) -> int | float:
    text = node.value
    if _INT_TEXT.fullmatch(text):
        return int(text)
    return float(text)


def _dtype(name: str) -> Any:
    import jax.numpy as jnp

    return jnp.dtype(getattr(jnp, _DTYPE_NAMES[name]))


def _convert_scalar(ty: SchemaType, node: DefaultNode, nullable: bool) -> Any:
    kind, value, base = node.kind, node.value, ty.base
    if kind == "ident" and value == "None":
        if base == "Tensor" and not nullable:
            raise DefaultError("a non-optional Tensor cannot default to None", node.pos)
        return None
    if kind == "list":
        raise DefaultError(f"expected a single {base} value, not a list", node.pos)
    if base in ("Tensor", "Generator", "Storage", "Stream"):
        raise DefaultError(f"{base} arguments can only default to None", node.pos)
    if base in ("int", "SymInt"):
        if kind == "num":
            n = _num(node)
            if isinstance(n, int):
                return n
        if kind == "ident" and value in ("True", "False"):
            return value == "True"
        if kind == "ident" and value in _INT_ENUM_NAMES:
            return _INT_ENUM_NAMES[value]
        raise DefaultError(f"expected an integer default for {base}", node.pos)
    if base in ("float", "SymFloat", "Scalar", "complex"):
        if kind == "num":
            n = _num(node)
            return float(n) if base in ("float", "SymFloat") else n
        if kind == "ident":
            if value in ("inf", "-inf", "nan"):
                return float(value)
            if base == "Scalar" and value in ("True", "False"):
                return value == "True"
        raise DefaultError(f"expected a number default for {base}", node.pos)
    if base in ("bool", "SymBool"):
        if kind == "ident" and value in ("True", "False"):
            return value == "True"
        if kind == "num" and value in ("0", "1"):
            return value == "1"
        raise DefaultError("expected True or False", node.pos)
    if base == "str":
        if kind == "str":
            return value
        raise DefaultError('expected a quoted string (e.g. "foo")', node.pos)
    if base == "ScalarType":
        if kind == "ident" and value in _DTYPE_NAMES:
            return _dtype(value)
        raise DefaultError(
            f"unknown dtype {value!r}; expected one of {', '.join(sorted(_DTYPE_NAMES))}",
            node.pos,
        )
    if base in ("Device", "Layout", "MemoryFormat", "Dimname", "QScheme"):
        if kind in ("str", "ident"):
            return value
        if kind == "num" and base != "Device":
            return _num(node)
        raise DefaultError(f"expected a name or a string for {base}", node.pos)
    raise DefaultError(f"cannot interpret a default for {base}", node.pos)  # pragma: no cover


def convert_default(ty: SchemaType, node: DefaultNode) -> Any:
    """The Python value of a parsed default ``node`` for type ``ty`` (``DefaultError`` if bad)."""
    try:
        if node.kind == "ident" and node.value == "None":
            if ty.is_tensor_like and not ty.optional and not ty.is_list:
                raise DefaultError("a non-optional Tensor cannot default to None", node.pos)
            return None
        if not ty.is_list:
            return _convert_scalar(ty, node, ty.optional)
        elem = ty.element
        if node.kind == "list":
            items = [_convert_scalar(elem, n, ty.elem_optional) for n in node.value]
            if ty.list_size is not None and len(items) != ty.list_size:
                raise DefaultError(
                    f"expected {ty.list_size} elements for {ty}, got {len(items)}", node.pos
                )
            return items
        if ty.list_size is not None and not ty.is_tensor_like:
            return [_convert_scalar(elem, node, ty.elem_optional)] * ty.list_size
        raise DefaultError(f"expected a list default (e.g. [1, 2]) for {ty}", node.pos)
    except (ValueError, OverflowError, AttributeError) as e:  # e.g. a dtype jax lacks
        raise DefaultError(str(e) or type(e).__name__, node.pos) from None
