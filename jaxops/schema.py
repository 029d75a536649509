"""Operator schemas in PyTorch's spelling: the data model and the parser.

A schema string such as ``"mylib::foo.out(Tensor x, *, Tensor(a!) out) -> Tensor(a!)"`` is
parsed into a :class:`FunctionSchema`; ``str()`` of the result gives the canonical text back::

    >>> s = parse_schema("mylib::foo(Tensor x, int[2] k=1, *, float eps=1e-05) -> (Tensor, Tensor)")
    >>> s.name, [a.name for a in s.arguments], s.arguments[1].default_value
    ('mylib::foo', ['x', 'k', 'eps'], [1, 1])
    >>> str(s)
    'mylib::foo(Tensor x, int[2] k=1, *, float eps=1e-05) -> (Tensor, Tensor)'

Malformed text raises :class:`SchemaParseError` (a ``ValueError``) whose message shows the
text with a caret under the offending position and says ``at position N``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AliasInfo",
    "Argument",
    "FunctionSchema",
    "Return",
    "SchemaParseError",
    "SchemaType",
    "parse_schema",
]

#: Base types the parser accepts. The first block is what ``infer_schema`` produces.
BASE_TYPES: frozenset[str] = frozenset(
    {
        "Tensor",
        "SymInt",
        "int",
        "float",
        "bool",
        "str",
        "Scalar",
        "ScalarType",
        "Device",
        "Layout",
        "MemoryFormat",
        "Generator",
        "SymFloat",
        "SymBool",
        "complex",
        "Dimname",
        "Stream",
        "QScheme",
        "Storage",
    }
)

# Spellings people bring from C++ / NumPy / JAX, with the hint shown in the error.
_TYPE_HINTS: dict[str, str] = {
    "int64_t": "Use `SymInt` or `int` instead.",
    "int32_t": "Use `SymInt` or `int` instead.",
    "long": "Use `SymInt` or `int` instead.",
    "size_t": "Use `SymInt` or `int` instead.",
    "double": "Use `float` instead.",
    "float64": "Use `float` instead.",
    "float32": "Use `float` instead.",
    "string": "Use `str` instead.",
    "std::string": "Use `str` instead.",
    "c10::string_view": "Use `str` instead.",
    "Array": "Use `Tensor` instead.",
    "jax.Array": "Use `Tensor` instead.",
    "ndarray": "Use `Tensor` instead.",
    "at::Tensor": "Use `Tensor` instead.",
    "torch.Tensor": "Use `Tensor` instead.",
    "Number": "Use `Scalar` instead.",
    "dtype": "Use `ScalarType` instead.",
    "device": "Use `Device` instead.",
}

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

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT_TEXT = re.compile(r"-?\d+")


class SchemaParseError(ValueError):
    """A schema string (or a default value in one) is malformed.

    ``position`` is the 0-based index into ``text`` where the problem was found.

    >>> try:
    ...     parse_schema("f(Tensor x -> Tensor")
    ... except SchemaParseError as e:
    ...     e.position
    11
    """

    def __init__(self, message: str, text: str, position: int) -> None:
        self.text = text
        self.position = position
        self.reason = message
        super().__init__(_format_error(message, text, position))


def _format_error(message: str, text: str, position: int) -> str:
    shown = text.replace("\n", " ").replace("\r", " ").replace("\t", " ")
    caret = " " * max(position, 0) + "^"
    return f"{message} (at position {position}):\n    {shown}\n    {caret}"


# --------------------------------------------------------------------------- data model


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
        node = _parse_default_text(self.default)
        try:
            return _convert_default(self.type, node)
        except _DefaultError as e:
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


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    # -- low level
    def error(self, message: str, pos: int | None = None) -> SchemaParseError:
        return SchemaParseError(message, self.text, self.pos if pos is None else pos)

    def skip_ws(self) -> None:
        n = len(self.text)
        while self.pos < n and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, s: str) -> bool:
        self.skip_ws()
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str, what: str | None = None) -> None:
        if not self.accept(s):
            raise self.error(f"expected {what or repr(s)} but found {self.describe()}")

    def describe(self) -> str:
        self.skip_ws()
        if self.pos >= len(self.text):
            return "end of input"
        return repr(self.text[self.pos : self.pos + 10])

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.text)

    def ident(self, what: str) -> str:
        self.skip_ws()
        m = _IDENT.match(self.text, self.pos)
        if m is None:
            raise self.error(f"expected {what} but found {self.describe()}")
        self.pos = m.end()
        return m.group()

    def peek_ident(self) -> bool:
        self.skip_ws()
        return _IDENT.match(self.text, self.pos) is not None

    # -- grammar
    def schema(self) -> FunctionSchema:
        name, overload = "", ""
        if not self.peek("("):
            name, overload = self.qualified_name()
        arguments = self.arguments()
        self.expect("->", "'->'")
        returns, returns_tuple, double = self.returns()
        if not self.at_end():
            raise self.error(f"unexpected trailing text {self.describe()}")
        return FunctionSchema(name, overload, arguments, returns, returns_tuple, double)

    def qualified_name(self) -> tuple[str, str]:
        name = self.ident("an operator name or '('")
        if self.text.startswith("::", self.pos):
            self.pos += 2
            if not _IDENT.match(self.text, self.pos):
                raise self.error("expected an operator name after '::'")
            name += "::" + self.ident("an operator name")
        overload = ""
        if self.text.startswith(".", self.pos):
            self.pos += 1
            m = re.compile(r"[A-Za-z0-9_]+").match(self.text, self.pos)
            if m is None:
                raise self.error("expected an overload name after '.'")
            overload = m.group()
            self.pos = m.end()
        return name, overload

    def arguments(self) -> tuple[Argument, ...]:
        self.expect("(", "'('")
        args: list[Argument] = []
        seen: set[str] = set()
        kwarg_only = False
        star_pos = -1
        if self.accept(")"):
            return ()
        while True:
            self.skip_ws()
            if self.peek("*"):
                if kwarg_only:
                    raise self.error("'*' may appear only once")
                star_pos = self.pos
                self.pos += 1
                kwarg_only = True
            else:
                args.append(self.argument(kwarg_only, seen))
            if self.accept(")"):
                break
            self.expect(",", "',' or ')'")
        if kwarg_only and not any(a.kwarg_only for a in args):
            raise self.error("'*' must be followed by keyword-only arguments", star_pos)
        return tuple(args)

    def argument(self, kwarg_only: bool, seen: set[str]) -> Argument:
        ty = self.type()
        self.skip_ws()
        name_pos = self.pos
        name = self.ident("an argument name")
        if name in seen:
            raise self.error(f"duplicate argument name {name!r}", name_pos)
        seen.add(name)
        default: str | None = None
        if self.accept("="):
            self.skip_ws()
            start = self.pos
            node = self.default_node()
            default = self.text[start : self.pos]
            try:
                _convert_default(ty, node)
            except _DefaultError as e:
                raise self.error(
                    f"invalid default for argument {name!r}: {e.message}", e.pos
                ) from None
        return Argument(name, ty, default, kwarg_only)

    def type(self) -> SchemaType:
        self.skip_ws()
        start = self.pos
        m = re.compile(
            r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*(?:\.[A-Za-z_]\w*)*"
        ).match(self.text, self.pos)
        if m is None:
            raise self.error(f"expected a type but found {self.describe()}")
        base = m.group()
        if base not in BASE_TYPES:
            hint = _TYPE_HINTS.get(base)
            msg = f"unknown type {base!r}"
            if hint:
                msg += f". {hint}"
            raise self.error(msg, start)
        self.pos = m.end()
        alias = None
        if self.text.startswith("(", self.pos):
            alias = self.alias()
            if base != "Tensor":
                raise self.error(
                    f"alias annotations are only supported on Tensor types, not {base!r}", start
                )
        optional = False
        is_list = False
        list_size = None
        elem_optional = False
        if self.accept("?"):
            optional = True
        if self.accept("["):
            is_list = True
            elem_optional, optional = optional, False
            self.skip_ws()
            size_pos = self.pos
            m = re.compile(r"\d+").match(self.text, self.pos)
            if m is not None:
                if len(m.group()) > 18:
                    raise self.error("list size is too large", size_pos)
                list_size = int(m.group())
                self.pos = m.end()
                if list_size <= 0:
                    raise self.error("list size must be positive", size_pos)
            self.expect("]", "']' or a list size")
            if self.accept("?"):
                optional = True
            if self.peek("["):
                raise self.error("nested lists are not supported")
        if self.peek("?"):
            raise self.error("unexpected '?'")
        return SchemaType(base, optional, is_list, list_size, elem_optional, alias)

    def alias(self) -> AliasInfo:
        self.expect("(", "'('")
        if self.peek("*"):
            raise self.error("wildcard alias sets ('*') are not supported")
        name = self.ident("an alias set name")
        is_write = self.accept("!")
        if self.peek("->") or self.peek("|"):
            raise self.error(
                "alias set unions and '->' alias annotations (e.g. 'Tensor(a -> *)') "
                "are not supported",
            )
        if not self.accept(")"):
            raise self.error(f"expected ')' after alias set {name!r} but found {self.describe()}")
        return AliasInfo(name, is_write)

    def returns(self) -> tuple[tuple[Return, ...], bool, bool]:
        if self.accept("("):
            if self.accept("("):
                # PyTorch's spelling of a one-element tuple: ``((Tensor))``.
                ret = self.ret(set())
                self.expect(")", "')' closing a one-element tuple '((T))'")
                self.expect(")", "')' closing a one-element tuple '((T))'")
                return (ret,), True, True
            rets: list[Return] = []
            seen: set[str] = set()
            if not self.accept(")"):
                while True:
                    rets.append(self.ret(seen))
                    if self.accept(")"):
                        break
                    self.expect(",", "',' or ')'")
            return tuple(rets), True, False
        return (self.ret(set()),), False, False

    def ret(self, seen: set[str]) -> Return:
        self.skip_ws()
        if self.peek("("):
            raise self.error("nested tuples are not supported in returns")
        ty = self.type()
        name = None
        if self.peek_ident():
            name_pos = self.pos
            name = self.ident("a return name")
            if name in seen:
                raise self.error(f"duplicate return name {name!r}", name_pos)
            seen.add(name)
        return Return(ty, name)

    def default_node(self) -> _Node:
        self.skip_ws()
        start = self.pos
        if self.peek("["):
            self.pos += 1
            items: list[_Node] = []
            if not self.accept("]"):
                while True:
                    self.skip_ws()
                    if self.peek("["):
                        raise self.error("nested lists are not supported in defaults")
                    items.append(self.scalar_node())
                    if self.accept("]"):
                        break
                    self.expect(",", "',' or ']'")
            return _Node("list", items, start)
        return self.scalar_node()

    def scalar_node(self) -> _Node:
        self.skip_ws()
        start = self.pos
        text = self.text
        if start < len(text) and text[start] in "\"'":
            return _Node("str", self.string_literal(), start)
        m = _NUMBER.match(text, start)
        if m is not None and not _IDENT.match(text, m.end()):
            self.pos = m.end()
            return _Node("num", m.group(), start)
        neg = text.startswith("-", start)
        m = _IDENT.match(text, start + (1 if neg else 0))
        if m is not None and (not neg or m.group() == "inf"):
            self.pos = m.end()
            return _Node("ident", text[start : m.end()], start)
        raise self.error(f"expected a default value but found {self.describe()}")

    def string_literal(self) -> str:
        text = self.text
        quote = text[self.pos]
        start = self.pos
        i = self.pos + 1
        out: list[str] = []
        escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}
        while i < len(text):
            c = text[i]
            if c == "\\":
                if i + 1 >= len(text):
                    break
                nxt = text[i + 1]
                if nxt not in escapes:
                    raise self.error(f"unknown escape sequence '\\{nxt}' in string", i)
                out.append(escapes[nxt])
                i += 2
                continue
            if c == quote:
                self.pos = i + 1
                return "".join(out)
            out.append(c)
            i += 1
        raise self.error("unterminated string literal", start)


@dataclass(frozen=True)
class _Node:
    kind: str  # "num" | "str" | "ident" | "list"
    value: Any  # text for num/ident, the decoded string for str, list[_Node] for list
    pos: int


class _DefaultError(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


def _parse_default_text(text: str) -> _Node:
    p = _Parser(text)
    node = p.default_node()
    if not p.at_end():
        raise p.error(f"unexpected trailing text {p.describe()} in default value")
    return node


def _render_string(s: str) -> str:
    """Render ``s`` as a double-quoted schema string literal."""
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace("\0", "\\0")
    return f'"{out}"'


#: Public name of the string renderer (schema defaults; jaxops.inference uses it).
render_string = _render_string


def _num(node: _Node) -> int | float:
    text = node.value
    if _INT_TEXT.fullmatch(text):
        return int(text)
    return float(text)


def _dtype(name: str) -> Any:
    import jax.numpy as jnp

    return jnp.dtype(getattr(jnp, _DTYPE_NAMES[name]))


def _convert_scalar(ty: SchemaType, node: _Node, nullable: bool) -> Any:
    kind, value, base = node.kind, node.value, ty.base
    if kind == "ident" and value == "None":
        if base == "Tensor" and not nullable:
            raise _DefaultError("a non-optional Tensor cannot default to None", node.pos)
        return None
    if kind == "list":
        raise _DefaultError(f"expected a single {base} value, not a list", node.pos)
    if base in ("Tensor", "Generator", "Storage", "Stream"):
        raise _DefaultError(f"{base} arguments can only default to None", node.pos)
    if base in ("int", "SymInt"):
        if kind == "num":
            n = _num(node)
            if isinstance(n, int):
                return n
        if kind == "ident" and value in ("True", "False"):
            return value == "True"
        if kind == "ident" and value in _INT_ENUM_NAMES:
            return _INT_ENUM_NAMES[value]
        raise _DefaultError(f"expected an integer default for {base}", node.pos)
    if base in ("float", "SymFloat", "Scalar", "complex"):
        if kind == "num":
            n = _num(node)
            return float(n) if base in ("float", "SymFloat") else n
        if kind == "ident":
            if value in ("inf", "-inf", "nan"):
                return float(value)
            if base == "Scalar" and value in ("True", "False"):
                return value == "True"
        raise _DefaultError(f"expected a number default for {base}", node.pos)
    if base in ("bool", "SymBool"):
        if kind == "ident" and value in ("True", "False"):
            return value == "True"
        if kind == "num" and value in ("0", "1"):
            return value == "1"
        raise _DefaultError("expected True or False", node.pos)
    if base == "str":
        if kind == "str":
            return value
        raise _DefaultError('expected a quoted string (e.g. "foo")', node.pos)
    if base == "ScalarType":
        if kind == "ident" and value in _DTYPE_NAMES:
            return _dtype(value)
        raise _DefaultError(
            f"unknown dtype {value!r}; expected one of {', '.join(sorted(_DTYPE_NAMES))}",
            node.pos,
        )
    if base in ("Device", "Layout", "MemoryFormat", "Dimname", "QScheme"):
        if kind in ("str", "ident"):
            return value
        if kind == "num" and base != "Device":
            return _num(node)
        raise _DefaultError(f"expected a name or a string for {base}", node.pos)
    raise _DefaultError(f"cannot interpret a default for {base}", node.pos)  # pragma: no cover


def _convert_default(ty: SchemaType, node: _Node) -> Any:
    """The Python value of a parsed default ``node`` for type ``ty`` (``_DefaultError`` if bad)."""
    try:
        if node.kind == "ident" and node.value == "None":
            if ty.is_tensor_like and not ty.optional and not ty.is_list:
                raise _DefaultError("a non-optional Tensor cannot default to None", node.pos)
            return None
        if not ty.is_list:
            return _convert_scalar(ty, node, ty.optional)
        elem = ty.element
        if node.kind == "list":
            items = [_convert_scalar(elem, n, ty.elem_optional) for n in node.value]
            if ty.list_size is not None and len(items) != ty.list_size:
                raise _DefaultError(
                    f"expected {ty.list_size} elements for {ty}, got {len(items)}", node.pos
                )
            return items
        if ty.list_size is not None and not ty.is_tensor_like:
            return [_convert_scalar(elem, node, ty.elem_optional)] * ty.list_size
        raise _DefaultError(f"expected a list default (e.g. [1, 2]) for {ty}", node.pos)
    except (ValueError, OverflowError, AttributeError) as e:  # e.g. a dtype jax lacks
        raise _DefaultError(str(e) or type(e).__name__, node.pos) from None


def parse_schema(s: str) -> FunctionSchema:
    """Parse a PyTorch-spelled schema string.

    >>> str(parse_schema("foo(Tensor(a!) x, SymInt? n=None) -> Tensor(a!)"))
    'foo(Tensor(a!) x, SymInt? n=None) -> Tensor(a!)'
    >>> parse_schema("(Tensor x) -> (Tensor values, Tensor indices)").returns[1].name
    'indices'

    Raises :class:`SchemaParseError` (a ``ValueError``) for malformed text.
    """
    if not isinstance(s, str):
        raise TypeError(f"parse_schema expects a str, got {type(s).__name__}")
    return _Parser(s).schema()


# --------------------------------------------------------------------------- helpers
def is_functional_schema(schema: FunctionSchema | str) -> bool:
    """Whether an op with this schema is functional: it mutates no argument, returns no
    view of one (``-> Tensor(a)``) and returns at least one value (PyTorch's
    ``torch._library.utils.is_functional_schema``).

    >>> is_functional_schema("foo(Tensor(a) x) -> Tensor")
    True
    >>> is_functional_schema("foo(Tensor(a!) x) -> Tensor"), is_functional_schema("foo(Tensor x) -> ()")
    (False, False)
    """
    if isinstance(schema, str):
        schema = parse_schema(schema)
    if not isinstance(schema, FunctionSchema):
        raise TypeError(
            f"is_functional_schema expects a FunctionSchema or a schema string, got {type(schema).__name__}"
        )
    if schema.is_mutable:
        return False
    if any(r.type.alias is not None and not r.type.alias.is_write for r in schema.returns):
        return False
    return bool(schema.returns)


def is_tensorlist_like_type(typ: SchemaType | str) -> bool:
    """Whether a schema type is a list of tensors: ``Tensor[]``, ``Tensor?[]``, ``Tensor[]?``,
    ``Tensor?[]?`` (PyTorch's ``torch._library.utils.is_tensorlist_like_type``).

    >>> is_tensorlist_like_type(parse_schema("f(Tensor?[]? x) -> ()").arguments[0].type)
    True
    >>> is_tensorlist_like_type("Tensor"), is_tensorlist_like_type("SymInt[]")
    (False, False)
    """
    if isinstance(typ, str):
        typ = parse_schema(f"f({typ} x) -> ()").arguments[0].type
    if not isinstance(typ, SchemaType):
        raise TypeError(
            f"is_tensorlist_like_type expects a SchemaType or a type string, got {type(typ).__name__}"
        )
    return typ.base == "Tensor" and typ.is_list
