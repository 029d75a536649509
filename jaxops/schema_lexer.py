"""The lexical layer of schema strings: the scanner, default-value literals, errors.

:class:`SchemaScanner` walks a schema text (whitespace, punctuation, identifiers) and reads
default-value literals (numbers, names, quoted strings, lists of those) into
:class:`DefaultNode` trees; the grammar of whole schemas (:func:`jaxops.schema.parse_schema`)
builds on it.  :class:`SchemaParseError` is the error both raise.

>>> parse_default_text("[1, 2]").kind, render_string('a"b')
('list', '"a\\\\"b"')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


class SchemaParseError(ValueError):
    """A schema string (or a default value in one) is malformed.

    ``position`` is the 0-based index into ``text`` where the problem was found.

    >>> from jaxops.schema import parse_schema
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


@dataclass(frozen=True)
class DefaultNode:
    """A parsed default-value literal: its kind, value and position in the text."""

    kind: str  # "num" | "str" | "ident" | "list"
    value: Any  # text for num/ident, the decoded string for str, list[DefaultNode] for list
    pos: int


class DefaultError(Exception):
    """A default value that does not fit its type (message and position; no text yet)."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos



class SchemaScanner:
    """A cursor over schema text: whitespace, punctuation, identifiers and default literals."""

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

    def at_ident(self) -> bool:
        """Whether an identifier starts right at the cursor (no whitespace skipped)."""
        return _IDENT.match(self.text, self.pos) is not None

    def default_node(self) -> DefaultNode:
        self.skip_ws()
        start = self.pos
        if self.peek("["):
            self.pos += 1
            items: list[DefaultNode] = []
            if not self.accept("]"):
                while True:
                    self.skip_ws()
                    if self.peek("["):
                        raise self.error("nested lists are not supported in defaults")
                    items.append(self.scalar_node())
                    if self.accept("]"):
                        break
                    self.expect(",", "',' or ']'")
            return DefaultNode("list", items, start)
        return self.scalar_node()

    def scalar_node(self) -> DefaultNode:
        self.skip_ws()
        start = self.pos
        text = self.text
        if start < len(text) and text[start] in "\"'":
            return DefaultNode("str", self.string_literal(), start)
        m = _NUMBER.match(text, start)
        if m is not None and not _IDENT.match(text, m.end()):
            self.pos = m.end()
            return DefaultNode("num", m.group(), start)
        neg = text.startswith("-", start)
        m = _IDENT.match(text, start + (1 if neg else 0))
        if m is not None and (not neg or m.group() == "inf"):
            self.pos = m.end()
            return DefaultNode("ident", text[start : m.end()], start)
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



def parse_default_text(text: str) -> DefaultNode:
    """Parse ``text`` (a default as written in a schema) into a :class:`DefaultNode`."""
    p = SchemaScanner(text)
    node = p.default_node()
    if not p.at_end():
        raise p.error(f"unexpected trailing text {p.describe()} in default value")
    return node


def render_string(s: str) -> str:
    """Render ``s`` as a double-quoted schema string literal."""
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace("\0", "\\0")
    return f'"{out}"'
