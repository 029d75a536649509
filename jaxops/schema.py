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

import re

# The data model and the lexer live in their own modules; importable from here as before.
from jaxops.schema_lexer import DefaultError, SchemaParseError, SchemaScanner
from jaxops.schema_lexer import render_string as render_string
from jaxops.schema_model import DTYPE_NAMES as DTYPE_NAMES
from jaxops.schema_model import (
    AliasInfo,
    Argument,
    FunctionSchema,
    Return,
    SchemaType,
    convert_default,
)

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


class _Parser(SchemaScanner):
    """The grammar of schema strings, on top of the scanner; builds the data model."""

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
            if not self.at_ident():
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
                convert_default(ty, node)
            except DefaultError as e:
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
