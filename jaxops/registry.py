"""The global op table and ``jaxops.ops.<ns>.<name>[.<overload>]``.

Ops are stored by qualified name (``"ns::name"``) with one entry per overload
(``""`` is the default overload).  Registering an op under an existing name and
overload replaces it, so re-running a notebook cell redefines the op.

Cache invalidation (the single signal point is :func:`bump_epoch`):

* ``bump_epoch(op)`` -- called by every registration of ``op`` (definition,
  kernel, fake, autograd, vmap rule, destruction) -- drops exactly the JAX
  traces that included ``op``: while an op is traced, :func:`note_traced`
  records which cached JAX traces are in progress around it (the functions
  ``jit`` / ``eval_shape`` / ``scan`` ... are tracing), and while a top-level
  ``jit`` is lowered, a monitoring listener records the jitted function when
  its program contains the op.  Redefining an op therefore recompiles only the
  jitted functions that used it; every other cache, JAX's included, is kept.
  The records hold the functions weakly (nothing is kept alive by them).
* ``bump_epoch()`` with no op invalidates every trace (a change that affects
  tracing everywhere); the *trace key* below then changes.
* Modes (:func:`set_mode` globally, :func:`mode_scope` for one thread or
  ``contextvars`` context) change what tracing produces; they enter the *trace
  key* by value, so leaving a mode restores the earlier traces.

The trace key -- ``_KEY[0]``, ``(global epoch, modes)`` of the current context
-- is part of every op's jit cache key and, through a JAX user context
(thread-local when a context sets a mode), of JAX's own trace/compile caches.

A jitted function traced only *inside* another trace, at a time when every
function it called that used the op was already cached, never calls the op: the
listener finds it when the enclosing program is lowered (by its source
location among JAX's cached traces).  Known limit: such a function traced under
``jax.eval_shape`` / ``.trace()`` only (never compiled) is not seen; ``bump_epoch()``
drops it.  A global change (``set_mode``, ``bump_epoch()``) made while another
thread is inside a ``mode_scope`` reaches that thread's trace key when it
leaves the scope.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import jax

#: The registry sits below the op classes: it stores any op object (``CustomOp``).
CustomOp = Any

_OPS: dict[str, dict[str, CustomOp]] = {}
_EPOCH = [0]  # bumped by every registration (jaxops' own caches, e.g. plan, key on it)
_GLOBAL = [0]  # bumped by bump_epoch() without an op: every trace is stale
_MODES: dict[str, Any] = {}  # global modes: the default of contexts that set none
#: Per-context mode overrides (``mode_scope``): a tuple of ``(name, value)``
#: pairs (value None: the mode is off in this context), or None.
_LOCAL_MODES: contextvars.ContextVar[tuple[tuple[str, Any], ...] | None] = contextvars.ContextVar(
    "jaxops_modes", default=None
)
#: The trace key of a context with overrides (None: the global key applies).
_LOCAL_KEY: contextvars.ContextVar[Any] = contextvars.ContextVar("jaxops_trace_key", default=None)
_GLOBAL_KEY: list[Any] = [(0, ())]
_JAX_KEY = jax.make_user_context(_GLOBAL_KEY[0])


class _TraceKey:
    """``_KEY[0]``: the trace key of the current context (read on every op call)."""

    __slots__ = ()

    def __getitem__(self, index: int) -> Any:
        key = _LOCAL_KEY.get()
        return _GLOBAL_KEY[0] if key is None else key


#: ``_KEY[0]`` is the current trace key, ``(global epoch, modes)``: part of every
#: op's jit cache key and of JAX's trace/compile caches (see the module docstring).
_KEY = _TraceKey()


def _modes_key(overrides: tuple[tuple[str, Any], ...] | None) -> tuple[tuple[str, Any], ...]:
    modes = dict(_MODES)
    for name, value in overrides or ():
        if value is None:
            modes.pop(name, None)
        else:
            modes[name] = value
    return tuple(sorted(modes.items()))


def _publish() -> None:
    _GLOBAL_KEY[0] = (_GLOBAL[0], _modes_key(None))
    _JAX_KEY.set_global(_GLOBAL_KEY[0])


def epoch() -> Any:
    """The trace key of the current context (``_KEY[0]``): global epoch and modes; hashable.

    The static part of every op's jit cache key.  It changes with modes and with
    ``bump_epoch()`` (no op), *not* with a registration of one op: those drop
    exactly the traces that used the op (see :func:`bump_epoch`), so other ops'
    caches survive.
    """
    return _KEY[0]


def registrations() -> Any:
    """A hashable value that changes on every registration and mode change.

    For jaxops' own caches of whole-program results (``jaxops.plan``), which are
    not tracked per op.
    """
    return (_EPOCH[0], _KEY[0])


def set_mode(name: str, value: Any) -> None:
    """Set a global mode that traced code depends on (None turns it off).

    Contexts that set the mode with :func:`mode_scope` keep their own value.
    """
    if value is None:
        _MODES.pop(name, None)
    else:
        _MODES[name] = value
    _publish()


def get_mode(name: str, default: Any = None) -> Any:
    """The value of mode ``name`` in the current context (its override, else the global one)."""
    for n, value in reversed(_LOCAL_MODES.get() or ()):
        if n == name:
            return default if value is None else value
    return _MODES.get(name, default)


@contextlib.contextmanager
def mode_scope(name: str, value: Any) -> Iterator[None]:
    """Set mode ``name`` to ``value`` (None: off) in the current thread / context only.

    Other threads keep the global value; the trace key of this context changes,
    so traces made inside are not reused outside (and the reverse).
    """
    overrides = tuple(p for p in (_LOCAL_MODES.get() or ()) if p[0] != name) + ((name, value),)
    key = (_GLOBAL[0], _modes_key(overrides))
    modes_token = _LOCAL_MODES.set(overrides)
    key_token = _LOCAL_KEY.set(key)
    jax_scope = _JAX_KEY(key)  # JAX's user context, thread-local
    jax_scope.__enter__()
    try:
        yield
    finally:
        jax_scope.__exit__(None, None, None)
        _LOCAL_KEY.reset(key_token)
        _LOCAL_MODES.reset(modes_token)


# ------------------------------------------------------------------ invalidation
_LOCK = threading.RLock()
#: qualname -> {traced function (weak): [jit infos of the jitted functions wrapping it]}
_DEPENDENTS: dict[str, weakref.WeakKeyDictionary[Any, list[Any]]] = {}
#: qualnames traced under a function that cannot be held weakly (invalidate everything)
_UNTRACKED: set[str] = set()
_OP_NAME = re.compile(r"[A-Za-z_][\w.]*::[A-Za-z_][\w.]*")
_LISTENING = [False]


def _jax_internals() -> dict[str, Any] | None:
    """JAX's private trace caches this module evicts from (None if JAX changed them).

    ``"caches"`` maps ``(file, function name)`` of a JAX function that caches a
    trace per user function to ``(name of that parameter, the cache)``.
    """
    try:
        from jax._src import ad_checkpoint as _remat
        from jax._src import dispatch as _dispatch
        from jax._src import pjit as _pjit
        from jax._src.interpreters import partial_eval as _pe
        from jax._src.interpreters import pxla as _pxla
        from jax._src.lax import lax as _lax

        # JAX 0.10 decorates ``trace_to_jaxpr`` itself; 0.11 wraps ``trace_to_jaxpr_nocache``
        traced_name = "trace_to_jaxpr_nocache" if hasattr(_pe, "trace_to_jaxpr_nocache") else "trace_to_jaxpr"
        caches = {
            (_pe.__file__, traced_name): ("fun", _pe.trace_to_jaxpr),
            (_remat.__file__, "_trace_to_jaxpr"): ("fun", _remat._trace_to_jaxpr),
        }
        composite = getattr(_lax, "_trace_composite_to_jaxpr", None)
        if composite is not None:
            caches[(_lax.__file__, "_trace_composite_to_jaxpr")] = ("fun", composite)
        return {
            "pjit_file": _pjit.__file__,
            "pxla_file": _pxla.__file__,
            "cpp_pjit": _pjit._cpp_pjit,
            "infer_params_cached": _pjit._infer_params_cached,
            "caches": caches,
            "lower_event": _dispatch.JAXPR_TO_MLIR_MODULE_EVENT,
        }
    except (ImportError, AttributeError):  # pragma: no cover - another JAX version
        return None


_JAX = _jax_internals()


def _record(qualname: str, fun: Any, info: Any) -> None:
    if fun is None:  # a JAX whose frames look different: stay correct, invalidate everything
        with _LOCK:
            _UNTRACKED.add(qualname)
        return
    with _LOCK:
        deps = _DEPENDENTS.get(qualname)
        if deps is None:
            deps = _DEPENDENTS[qualname] = weakref.WeakKeyDictionary()
        try:
            infos = deps.get(fun)
            if infos is None:
                infos = deps[fun] = []
        except TypeError:  # not weakly referenceable: fall back to invalidating everything
            _UNTRACKED.add(qualname)
            return
        if info is not None and not any(i is info for i in infos):
            infos.append(info)


def note_traced(op: CustomOp) -> None:
    """Record the JAX traces in progress around a traced call of ``op``.

    Called by the op's call path when an argument is a tracer.  Each enclosing
    ``jit`` (its function and options) and each enclosing cached trace
    (``jax.eval_shape``, ``lax.scan`` bodies, ``jax.checkpoint``...) is recorded
    weakly, so :func:`bump_epoch` of ``op`` can drop exactly those traces.
    """
    if _JAX is None:
        _UNTRACKED.add(op.qualname)
        return
    pjit_file, caches = _JAX["pjit_file"], _JAX["caches"]
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_infer_params" and code.co_filename == pjit_file:
            loc = frame.f_locals
            info = loc.get("ji")
            _record(op.qualname, loc.get("fun") if info is not None else None, info)
        else:
            cache = caches.get((code.co_filename, code.co_name))
            if cache is not None:
                _record(op.qualname, frame.f_locals.get(cache[0]), None)
        frame = frame.f_back
    _listen()


def _ops_in(jaxpr: Any, nested: dict[str, set[str]], memo: dict[int, frozenset[str]]) -> frozenset[str]:
    """The op names used anywhere in ``jaxpr``; fills ``nested`` with the ops of each nested ``jit``.

    ``nested`` maps a nested jitted function's source info (``"f at file.py:12"``)
    to the ops its program uses (the ops' own jits are left out).
    """
    from jax._src import core

    key = id(jaxpr)
    if key in memo:
        return memo[key]
    memo[key] = frozenset()
    found: set[str] = set()
    for eqn in jaxpr.eqns:
        name = eqn.params.get("name")
        is_op = isinstance(name, str) and "::" in name
        if is_op:
            found.update(_OP_NAME.findall(name))
        for sub in core.jaxprs_in_params(eqn.params):
            inner = _ops_in(sub, nested, memo)
            found |= inner
            if inner and not is_op and "jaxpr" in eqn.params:  # a nested jit using ops
                src = getattr(getattr(sub, "debug_info", None), "func_src_info", None)
                if isinstance(src, str):
                    nested.setdefault(src, set()).update(inner)
    memo[key] = frozenset(found)
    return memo[key]


def _record_nested(nested: dict[str, set[str]]) -> None:
    """Record the cached nested jits whose programs use ops (matched by source info).

    A jitted function traced only inside another trace, reusing the cached trace
    of a function that used the op, never calls the op itself: find it among
    JAX's cached traces by its source location (functions defined at the same
    place are all recorded, which only costs them a retrace).
    """
    for key in _JAX["infer_params_cached"].cache_keys():  # type: ignore[index]
        try:
            ref, _, args, _ = key
            fun, info = ref(), args[0]
            ops = nested.get(info.fun_sourceinfo)
        except Exception:  # noqa: BLE001 - another JAX's key layout: nothing to learn
            return
        if fun is None or not ops:
            continue
        for qualname in ops:
            if qualname in _OPS:
                _record(qualname, fun, info)


def _on_lowering(event: str, duration_secs: float, **kwargs: Any) -> None:
    """Monitoring listener: record a top-level jitted function whose program uses ops.

    Runs while JAX lowers a program, inside the ``jit`` call that compiles it;
    finds that call's function and the program in the enclosing frames.  This
    catches ops reached through a nested ``jit`` whose own trace was cached (and
    records such nested jits too).
    """
    del duration_secs, kwargs
    if _JAX is None or event != _JAX["lower_event"] or not _OPS:
        return
    jaxpr = fun = info = None
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if jaxpr is None and code.co_name == "_cached_lowering_to_hlo" and code.co_filename == _JAX["pxla_file"]:
            jaxpr = frame.f_locals.get("closed_jaxpr")
        elif code.co_name == "cache_miss" and code.co_filename == _JAX["pjit_file"]:
            loc = frame.f_locals
            fun, info = loc.get("fun"), loc.get("jit_info")
            break
        frame = frame.f_back
    if jaxpr is None or fun is None:
        return
    nested: dict[str, set[str]] = {}
    try:
        found = _ops_in(getattr(jaxpr, "jaxpr", jaxpr), nested, {})
        for qualname in found:
            if qualname in _OPS:
                _record(qualname, fun, info)
        if nested:
            _record_nested(nested)
    except Exception:  # noqa: BLE001 - never break a compilation over bookkeeping
        return


def _listen() -> None:
    if not _LISTENING[0]:
        with _LOCK:
            if not _LISTENING[0]:
                jax.monitoring.register_event_duration_secs_listener(_on_lowering)
                _LISTENING[0] = True


def _invalidate(qualname: str) -> None:
    """Drop every cached JAX trace (and compiled program) recorded as using ``qualname``."""
    with _LOCK:
        deps = _DEPENDENTS.pop(qualname, None)
        untracked = qualname in _UNTRACKED
        _UNTRACKED.discard(qualname)
    if untracked or _JAX is None:
        _bump_global()
        return
    if not deps:
        return
    for fun, infos in list(deps.items()):
        for info in infos:  # the jitted function's compiled programs (C++ cache)
            _JAX["cpp_pjit"](fun, info)._clear_cache()
        _JAX["infer_params_cached"].evict_weakref(fun)
        for _, cache in _JAX["caches"].values():
            cache.evict_weakref(fun)


def _bump_global() -> None:
    _GLOBAL[0] += 1
    _publish()


def bump_epoch(op: CustomOp | str | None = None) -> None:
    """Signal a registration: drop the traces that ``op`` changes (every trace when None).

    Every registration calls this with the op (or its qualified name): jitted
    functions whose traces included the op retrace (and so run the new
    definition) at their next call; nothing else is recompiled.  Without an op,
    every trace, jaxops' and JAX's, is invalidated.
    """
    _EPOCH[0] += 1
    if op is None:
        _bump_global()
        return
    _invalidate(op if isinstance(op, str) else op.qualname)


def register(op: CustomOp) -> None:
    """Add ``op`` to the table, replacing an op of the same name and overload.

    Replacing drops the traces that used the old op once more, now that a retrace
    finds the new one (a thread tracing while the op was being built may have
    recorded the old one).
    """
    overloads = _OPS.setdefault(op.qualname, {})
    old = overloads.get(op.overload_name)
    overloads[op.overload_name] = op
    if old is not None and old is not op:
        _EPOCH[0] += 1
        _invalidate(op.qualname)


def unregister(qualname: str, overload: str | None = None, *, only: Any = None) -> None:
    """Remove an op (or one overload of it) from the table (traces that used it are dropped).

    With ``only=op``, nothing is removed unless the table still holds that very op
    (a later definition under the same name is left alone).
    """
    if qualname not in _OPS:
        return
    if only is not None and _OPS[qualname].get(only.overload_name) is not only:
        return
    bump_epoch(qualname)
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

__all__ = [
    "OpOverloadPacket",
    "all_ops",
    "as_op",
    "bump_epoch",
    "epoch",
    "get_mode",
    "lookup",
    "mode_scope",
    "note_traced",
    "ops",
    "registrations",
    "register",
    "set_mode",
]
