"""The global op table and ``jaxops.ops.<ns>.<name>[.<overload>]``.

Ops are stored by qualified name (``"ns::name"``) with one entry per overload
(``""`` is the default overload).  Registering an op under an existing name and
overload replaces it, so re-running a notebook cell redefines the op.

A module-level *epoch* is bumped whenever something that changes tracing
results changes globally (a mode, a profile set); it is part of every op's jit
cache key so stale traces are never reused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax

#: The registry sits below the op classes: it stores any op object (``CustomOp``).
CustomOp = Any

_OPS: dict[str, dict[str, CustomOp]] = {}
_EPOCH = [0]  # bumped by every registration
_MODES: dict[str, Any] = {}  # global modes that change what tracing produces
#: The current cache key, ``(registration epoch, modes)``: part of every op's jit
#: cache key and, through a JAX user context, of JAX's own trace/compile caches,
#: so a function jitted before a registration or a mode change is retraced after
#: it.  Modes enter by value, so leaving a mode restores the earlier key (and its
#: cached traces).
_KEY: list[Any] = [(0, ())]
_JAX_KEY = jax.make_user_context(_KEY[0])


def _publish() -> None:
    _KEY[0] = (_EPOCH[0], tuple(sorted(_MODES.items())))
    _JAX_KEY.set_global(_KEY[0])


def epoch() -> Any:
    """The current cache key (registration epoch and global modes); hashable."""
    return _KEY[0]


def bump_epoch() -> None:
    """Invalidate every traced cache, jaxops' and JAX's (called by every registration)."""
    _EPOCH[0] += 1
    _publish()


def set_mode(name: str, value: Any) -> None:
    """Set a global mode that traced code depends on (part of every cache key)."""
    if value is None:
        _MODES.pop(name, None)
    else:
        _MODES[name] = value
    _publish()


def register(op: CustomOp) -> None:
    """Add ``op`` to the table, replacing an op of the same name and overload."""
    _OPS.setdefault(op.qualname, {})[op.overload_name] = op


def unregister(qualname: str, overload: str | None = None, *, only: Any = None) -> None:
    """Remove an op (or one overload of it) from the table.

    With ``only=op``, nothing is removed unless the table still holds that very op
    (a later definition under the same name is left alone).
    """
    if qualname not in _OPS:
        return
    if only is not None and _OPS[qualname].get(only.overload_name) is not only:
        return
    if overload is None:
        del _OPS[qualname]
        return
    _OPS[qualname].pop(overload, None)
    if not _OPS[qualname]:
        del _OPS[qualname]


def lookup(qualname: str, overload: str = "") -> CustomOp:
    """The op registered as ``qualname`` (``"ns::name"`` or ``"ns::name.overload"``)."""
    if "." in qualname.split("::", 1)[-1] and not overload:
        qualname, _, overload = qualname.rpartition(".")
    try:
        return _OPS[qualname][overload]
    except KeyError:
        known = ", ".join(sorted(_OPS)) or "none"
        if qualname in _OPS:
            raise KeyError(
                f"{qualname} has no overload {overload!r} (overloads: "
                f"{', '.join(repr(o) for o in _OPS[qualname])})"
            ) from None
        raise KeyError(f"no op named {qualname!r} is registered (known ops: {known})") from None


def get(qualname: str) -> dict[str, CustomOp] | None:
    return _OPS.get(qualname)


def all_ops() -> Iterator[CustomOp]:
    """Every registered op (all overloads)."""
    for overloads in list(_OPS.values()):
        yield from list(overloads.values())


def namespaces() -> list[str]:
    return sorted({q.split("::")[0] for q in _OPS})


def as_op(op_or_name: Any) -> CustomOp:
    """Resolve an op object, an ``OpOverloadPacket`` or a qualified name to a :class:`CustomOp`."""
    if isinstance(op_or_name, OpOverloadPacket):
        return op_or_name.default
    if isinstance(op_or_name, str):
        return lookup(op_or_name)
    if callable(op_or_name) and hasattr(op_or_name, "definition"):  # an op (the table holds ops only)
        return op_or_name
    raise TypeError(f"expected an op or a qualified op name 'ns::name', got {type(op_or_name).__name__}")


class OpOverloadPacket:
    """All overloads of one op name: ``jaxops.ops.mylib.foo``.

    Calling it picks the first overload whose schema accepts the arguments.

    >>> # jaxops.ops.mylib.foo(x)          # overload resolution
    >>> # jaxops.ops.mylib.foo.default(x)  # the overload with no name
    >>> # jaxops.ops.mylib.foo.out(x, y)   # the overload named "out"
    """

    def __init__(self, qualname: str) -> None:
        self._qualname = qualname

    def _overloads(self) -> dict[str, CustomOp]:
        ovs = _OPS.get(self._qualname)
        if not ovs:
            raise AttributeError(f"op {self._qualname!r} is no longer registered")
        return ovs

    @property
    def default(self) -> CustomOp:
        ovs = self._overloads()
        if "" in ovs:
            return ovs[""]
        raise AttributeError(f"{self._qualname} has no default overload (overloads: {sorted(ovs)})")

    def overloads(self) -> list[str]:
        return ["default" if o == "" else o for o in self._overloads()]

    def __getattr__(self, name: str) -> CustomOp:
        if name.startswith("__"):
            raise AttributeError(name)
        ovs = self._overloads()
        if name == "default":
            return self.default
        if name in ovs:
            return ovs[name]
        # attributes of the default op (schema, name, register_*) are reachable too
        if "" in ovs and hasattr(ovs[""], name):
            return getattr(ovs[""], name)
        raise AttributeError(f"{self._qualname} has no overload or attribute {name!r} (overloads: {self.overloads()})")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ovs = self._overloads()
        if len(ovs) == 1:
            return next(iter(ovs.values()))(*args, **kwargs)
        errors = []
        for op in ovs.values():
            try:
                op.definition.binder.bind(args, kwargs)
            except TypeError as e:
                errors.append(f"  {op.name}{op.schema}: {e}")
                continue
            return op(*args, **kwargs)
        raise TypeError(
            f"{self._qualname}: the arguments failed to match any schema of the op's overloads:\n"
            + "\n".join(errors)
        )

    def __repr__(self) -> str:
        return f"<jaxops.OpOverloadPacket {self._qualname} overloads={self.overloads()}>"


class _Namespace:
    def __init__(self, ns: str) -> None:
        self._ns = ns

    def __getattr__(self, name: str) -> OpOverloadPacket:
        if name.startswith("__"):
            raise AttributeError(name)
        qualname = f"{self._ns}::{name}"
        if qualname not in _OPS:
            raise AttributeError(f"no op named '{qualname}' is registered")
        return OpOverloadPacket(qualname)

    def __dir__(self) -> list[str]:
        return sorted(q.split("::", 1)[1] for q in _OPS if q.startswith(self._ns + "::"))

    def __repr__(self) -> str:
        return f"<jaxops.ops.{self._ns}>"


class _Ops:
    """``jaxops.ops``: attribute access by namespace, then op name."""

    def __getattr__(self, ns: str) -> _Namespace:
        if ns.startswith("__"):
            raise AttributeError(ns)
        return _Namespace(ns)

    def __dir__(self) -> list[str]:
        return namespaces()

    def __repr__(self) -> str:
        return "<jaxops.ops>"


ops = _Ops()

__all__ = ["OpOverloadPacket", "all_ops", "as_op", "bump_epoch", "epoch", "lookup", "ops", "register", "set_mode"]
