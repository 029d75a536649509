"""Reading op profile files, bounded: limits, node counting, field checks.

:func:`read_profiles` is the body of :func:`jaxops.load_op_profiles`.  Only plain
YAML is accepted, and a file past any limit below raises ``ValueError`` while it
is read, before anything is built from it.  The limits are read from this module
at every load (patch them here, e.g. ``jaxops.profile_loader.MAX_OPS``);
:mod:`jaxops.profiles` re-exports them for reading.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import jax
import numpy as np

from jaxops.profile_types import MAX_RANK, OpProfile, TensorMetadata, cut

__all__ = [
    "FORMAT",
    "MAX_ALIASES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_OPS",
    "MAX_PROFILES",
    "compatible",
    "read_profiles",
]

#: Layout of the profile file; bump it whenever the layout changes.
FORMAT = 1

#: Limits of :func:`load_op_profiles`.  A file past any of them raises
#: ``ValueError`` while it is read, before anything is built from it, so a hostile
#: file ("billion laughs" aliases, deep nesting, huge ranks) costs little time
#: and memory.  Real profile files are far below them.
MAX_FILE_BYTES = 2 * 1024 * 1024
#: YAML nodes in the document, an alias counting as every node it stands for.
MAX_NODES = 500_000
#: Aliases (``*name``) in the document.
MAX_ALIASES = 1_000
#: Nesting depth of YAML collections (the format itself needs about 8).
MAX_DEPTH = 32
#: Ops in one file, and profiles in one file (over all ops).
MAX_OPS = 10_000
MAX_PROFILES = 100_000
#: Longest error message about a bad file.
_MAX_MESSAGE = 1_000

_SAFE_TAGS = frozenset(
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq")
)


def _quote(v: Any) -> str:
    """``repr(v)`` cut to a readable length (never expands a huge structure)."""
    if isinstance(v, dict):
        return f"a mapping of {len(v)} keys" if len(v) > 8 else cut(repr(v))
    if isinstance(v, list):
        return f"a list of {len(v)} items" if len(v) > 8 else cut(repr(v))
    return cut(repr(v))


def _bad_file(message: str) -> ValueError:
    return ValueError(cut("not a valid op profile file: " + message, _MAX_MESSAGE))


def _limited_loader_class() -> type:
    """A YAML SafeLoader that enforces the limits while composing the node graph.

    The node graph keeps an alias as a reference (compact); the limits count
    what it would expand to, so a document is rejected before any Python object
    is built.  Uses libyaml's parser when PyYAML has it.
    """
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent
    from yaml.resolver import Resolver

    try:
        from yaml._yaml import CParser as Parser  # libyaml: events only, composed below
    except ImportError:  # PyYAML without libyaml: the pure-Python reader, scanner and parser
        from yaml.parser import Parser as _YamlParser
        from yaml.reader import Reader
        from yaml.scanner import Scanner

        class _PyParser(Reader, Scanner, _YamlParser):
            def __init__(self, stream: Any) -> None:
                Reader.__init__(self, stream)
                Scanner.__init__(self)
                _YamlParser.__init__(self)

        Parser = _PyParser  # type: ignore[assignment,misc]

    class LimitedLoader(Composer, Parser, SafeConstructor, Resolver):  # type: ignore[misc,valid-type]
        def __init__(self, stream: Any) -> None:
            Parser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._depth = 0
            self._nodes = 0
            self._aliases = 0
            self._sizes: dict[int, int] = {}  # id(anchored node) -> nodes it expands to
            self._open: set[str] = set()  # anchors of collections being composed

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, AliasEvent):
                if event.anchor in self._open:
                    raise _bad_file(f"the alias *{cut(str(event.anchor))} refers to a node that contains it "
                                    "(a recursive alias)")
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise _bad_file(f"more than {MAX_ALIASES} aliases (the limit, MAX_ALIASES)")
                target = self.anchors.get(event.anchor)
                self._count(self._sizes.get(id(target), 1))
                return super().compose_node(parent, index)
            tag = getattr(event, "tag", None) if isinstance(event, NodeEvent) else None
            if tag is not None and tag not in ("!", "?") and tag not in _SAFE_TAGS:
                raise _bad_file(
                    f"the YAML tag {cut(str(tag))!s} is not allowed: only plain YAML is accepted "
                    "(Python object tags are refused and never run)"
                )
            anchor = getattr(event, "anchor", None) if isinstance(event, NodeEvent) else None
            collection = isinstance(event, CollectionStartEvent)
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _bad_file(f"collections nested deeper than {MAX_DEPTH} levels (the limit, MAX_DEPTH)")
            before = self._nodes
            self._count(1)
            if anchor is not None and collection:
                self._open.add(anchor)
            try:
                node = super().compose_node(parent, index)
            finally:
                if anchor is not None:
                    self._open.discard(anchor)
                self._depth -= 1
            if anchor is not None:
                self._sizes[id(node)] = self._nodes - before
            return node

        def _count(self, n: int) -> None:
            self._nodes += n
            if self._nodes > MAX_NODES:
                raise _bad_file(
                    f"more than {MAX_NODES} YAML nodes, counting each alias as what it stands for "
                    "(the limit, MAX_NODES)"
                )

    return LimitedLoader


_LOADER: list[type] = []


def _parse_limited(text: str) -> Any:
    import yaml

    if not _LOADER:
        _LOADER.append(_limited_loader_class())
    loader = _LOADER[0](text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise _bad_file(
            f"only plain YAML is accepted (Python object tags are refused): {cut(str(e), 400)}"
        ) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps far from it
        raise _bad_file(f"collections nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


class _Decoder:
    """Checks every field of a parsed profile document; errors name the field's path."""

    def __init__(self) -> None:
        self.profiles = 0

    @staticmethod
    def fail(path: str, expected: str, got: Any) -> ValueError:
        return _bad_file(f"{path}: expected {expected}, got {type(got).__name__} {_quote(got)}")

    def mapping(self, v: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(path, "a mapping", v)
        unknown = [k for k in v if k not in required and k not in optional]
        if unknown:
            raise _bad_file(f"{path}: unknown field {_quote(unknown[0])} (fields: {', '.join(required + optional)})")
        missing = [k for k in required if k not in v]
        if missing:
            raise _bad_file(f"{path}: missing field {missing[0]!r}")
        return v

    def integer(self, v: Any, path: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(path, "an int", v)
        if not lo <= v <= hi:
            raise _bad_file(f"{path}: {cut(repr(v))} is out of range ({lo}..{hi})")
        return v

    def meta(self, v: Any, path: str) -> TensorMetadata | None:
        if v is None:
            return None
        d = self.mapping(v, path, ("rank", "dtype"), ("device",))
        rank = self.integer(d["rank"], f"{path}.rank", 0, MAX_RANK)
        dtype = d["dtype"]
        if not isinstance(dtype, str):
            raise self.fail(f"{path}.dtype", "a dtype name (str)", dtype)
        try:
            np_dtype = np.dtype(jax.numpy.dtype(dtype))
        except TypeError:
            raise _bad_file(f"{path}.dtype: {_quote(dtype)} is not a dtype name") from None
        device = d.get("device", "cpu")
        if not isinstance(device, str):
            raise self.fail(f"{path}.device", "a platform name (str)", device)
        return TensorMetadata(rank, np_dtype, device)

    def value(self, v: Any, path: str) -> Any:
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return tuple(self.value(e, f"{path}[{i}]") for i, e in enumerate(v))
        if isinstance(v, dict):
            d = self.mapping(v, path, ("dtype",))
            if not isinstance(d["dtype"], str):
                raise self.fail(f"{path}.dtype", "a dtype name (str)", d["dtype"])
            try:
                return np.dtype(jax.numpy.dtype(d["dtype"]))
            except TypeError:
                raise _bad_file(f"{path}.dtype: {_quote(d['dtype'])} is not a dtype name") from None
        raise self.fail(path, "a plain value (null, bool, int, float, str, list or {dtype: ...})", v)

    def arg(self, v: Any, path: str) -> Any:
        if not isinstance(v, dict) or len(v) != 1:
            raise self.fail(path, "a mapping with one of the fields tensor, tensors, value", v)
        ((k, e),) = v.items()
        if k == "tensor":
            return self.meta(e, f"{path}.tensor")
        if k == "tensors":
            if not isinstance(e, list):
                raise self.fail(f"{path}.tensors", "a list", e)
            return tuple(self.meta(m, f"{path}.tensors[{i}]") for i, m in enumerate(e))
        if k == "value":
            return self.value(e, f"{path}.value")
        raise _bad_file(f"{path}: unknown field {_quote(k)} (fields: tensor, tensors, value)")

    def out(self, v: Any, path: str) -> TensorMetadata | tuple[TensorMetadata, ...]:
        if isinstance(v, list):
            metas = tuple(self.meta(m, f"{path}[{i}]") for i, m in enumerate(v))
            if any(m is None for m in metas):
                raise _bad_file(f"{path}: every output needs tensor metadata (got null)")
            return metas  # type: ignore[return-value]
        m = self.meta(v, path)
        if m is None:
            raise self.fail(path, "tensor metadata (a mapping) or a list of them", v)
        return m

    def hints(self, v: Any, path: str) -> Any:
        if v is None:
            return None
        if not isinstance(v, list):
            raise self.fail(path, "a list (one per output) or null", v)
        leaves = []
        for i, leaf in enumerate(v):
            if not isinstance(leaf, list):
                raise self.fail(f"{path}[{i}]", "a list (one per dimension)", leaf)
            dims = []
            for j, cands in enumerate(leaf):
                if not isinstance(cands, list):
                    raise self.fail(f"{path}[{i}][{j}]", "a list of size sources", cands)
                out = []
                for k, c in enumerate(cands):
                    where = f"{path}[{i}][{j}][{k}]"
                    if isinstance(c, list) and len(c) == 4 and c[0] == "arg":
                        out.append(("arg", *(self.integer(n, f"{where}[{m + 1}]", -1, 2**31) for m, n in enumerate(c[1:]))))
                    elif isinstance(c, list) and len(c) == 2 and c[0] == "const":
                        out.append(("const", self.integer(c[1], f"{where}[1]", 0, 2**62)))
                    else:
                        raise self.fail(where, "['arg', i, j, k] or ['const', size]", c)
                dims.append(tuple(out))
            leaves.append(tuple(dims))
        return tuple(leaves)

    def document(self, doc: Any) -> dict[str, set[OpProfile]]:
        from jaxops.version import __version__

        if not isinstance(doc, dict):
            raise _bad_file(f"expected a mapping at top level, got {type(doc).__name__}")
        version, fmt = doc.get("version"), doc.get("format")
        if version is not None and not isinstance(version, str):
            raise self.fail("version", "a version string such as '0.1.0'", version)
        if fmt is not None and (isinstance(fmt, bool) or not isinstance(fmt, int)):
            raise self.fail("format", "an int", fmt)
        if version is None or not compatible(version, fmt):
            raise RuntimeError(
                f"Unable to load outdated profile. It was saved with jaxops version {cut(repr(version))} "
                f"(format {fmt!r}) but the current jaxops version is {__version__!r} "
                f"(format {FORMAT}); record the profiles again with this version"
            )
        # only now the layout: a file from another version may have another one
        self.mapping(doc, "the top level", (), ("version", "format", "operators"))
        operators = doc.get("operators")
        if operators is None:
            return {}
        if not isinstance(operators, dict):
            raise self.fail("operators", "a mapping from op name to a list of profiles", operators)
        if len(operators) > MAX_OPS:
            raise _bad_file(f"operators: more than {MAX_OPS} ops (the limit, MAX_OPS)")
        out: dict[str, set[OpProfile]] = {}
        for name, entries in operators.items():
            if not isinstance(name, str) or "::" not in name:
                raise self.fail("operators", "op names 'ns::name' as keys", name)
            where = f"operators[{cut(repr(name))}]"
            if entries is None:
                entries = []
            if not isinstance(entries, list):
                raise self.fail(where, "a list of profiles", entries)
            self.profiles += len(entries)
            if self.profiles > MAX_PROFILES:
                raise _bad_file(f"more than {MAX_PROFILES} profiles (the limit, MAX_PROFILES)")
            profs = set()
            for i, e in enumerate(entries):
                path = f"{where}[{i}]"
                d = self.mapping(e, path, ("args_profile", "out_profile"), ("dims",))
                args = d["args_profile"]
                if not isinstance(args, list):
                    raise self.fail(f"{path}.args_profile", "a list", args)
                decoded = tuple(self.arg(a, f"{path}.args_profile[{j}]") for j, a in enumerate(args))
                out_prof = self.out(d["out_profile"], f"{path}.out_profile")
                profs.add(OpProfile(decoded, out_prof, self.hints(d.get("dims"), f"{path}.dims")))
            out[name] = profs
        return out


def _version_tuple(version: str) -> tuple[int, ...] | None:
    parts = version.split("+")[0].split(".")
    nums: list[int] = []
    for p in parts[:2]:
        digits = "".join(itertools.takewhile(str.isdigit, p))
        if not digits:
            return None
        nums.append(int(digits))
    return tuple(nums) if len(nums) == 2 else None


def compatible(version: str, fmt: Any) -> bool:
    """Whether a file written by jaxops ``version`` in format ``fmt`` can be read.

    The ``format`` number changes whenever the layout does; in addition, before
    1.0 every minor release may change it (semantic versioning for 0.x), so a
    0.x file needs the same major.minor, a later one the same major.
    """
    from jaxops.version import __version__

    if fmt != FORMAT:
        return False
    theirs, ours = _version_tuple(version), _version_tuple(__version__)
    if theirs is None or ours is None:
        return False
    if ours[0] == 0:
        return theirs == ours
    return theirs[0] == ours[0]


def read_profiles(f: Any) -> dict[str, set[OpProfile]]:
    """Read, check and decode a profile file (path or file object), within the limits."""
    limit = MAX_FILE_BYTES
    if isinstance(f, (str, os.PathLike)):
        with open(os.fspath(f), "rb") as fh:
            data: Any = fh.read(limit + 1)
    elif hasattr(f, "read"):
        data = f.read(limit + 1)
    else:
        raise TypeError(f"load_op_profiles: f must be a path or a file object, got {type(f).__name__}")
    if isinstance(data, (bytes, bytearray)):
        if len(data) > limit:
            raise _bad_file(f"larger than {limit} bytes (the limit, MAX_FILE_BYTES)")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise _bad_file(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    elif isinstance(data, str):
        if len(data) > limit or len(data.encode("utf-8", "surrogatepass")) > limit:
            raise _bad_file(f"larger than {limit} bytes (the limit, MAX_FILE_BYTES)")
        text = data
    else:
        raise TypeError(f"load_op_profiles: f.read() returned {type(data).__name__}, expected str or bytes")
    return _Decoder().document(_parse_limited(text))
