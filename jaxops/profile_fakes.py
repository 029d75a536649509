"""Recording op profiles from real calls and serving fakes generated from them.

The machinery behind :func:`jaxops.record_op_profiles` and
:func:`jaxops.unsafe_generate_fake_kernels` (both re-exported by
:mod:`jaxops.profiles`, whose docstring says how output shapes are chosen and
how calls are matched).

This module plugs into the op core through :mod:`jaxops.hooks`: :func:`override_fake`
is the fake override (consulted when an op needs its fake) and :func:`record_call`
the call recorder (installed while :data:`_RECORDING`); both receive the op's
definition.
This module must not import ``jaxops.op`` at module level.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxops import hooks
from jaxops.profile_types import (
    MissingOpProfile,
    OpProfile,
    TensorMetadata,
    cut,
    default_platform,
    plain,
    profile_sort_key,
)

__all__ = ["override_fake", "record_call", "record_op_profiles", "unsafe_generate_fake_kernels"]

#: ``record_call``, which looks at the blocks of the calling context only).
_RECORDING = False
_BLOCKS = [0]  # active blocks over all threads / contexts
_BLOCKS_LOCK = threading.Lock()

#: The recorders of the current context (innermost last): each is
#: (profiles dict, {(name, profile): profile}).  Per ``contextvars`` context, so
#: a block records the calls of its own thread only.
_RECORDERS: contextvars.ContextVar[
    tuple[tuple[dict[str, set[OpProfile]], dict[tuple[str, OpProfile], OpProfile]], ...]
] = contextvars.ContextVar("jaxops_profile_recorders", default=())

#: The profile sets served in the current context (innermost last), with their
#: tokens, and their merge (None when none is served).
_SERVING: contextvars.ContextVar[tuple[tuple[dict[str, set[OpProfile]], int], ...]] = contextvars.ContextVar(
    "jaxops_served_profiles", default=()
)
_ACTIVE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "jaxops_active_profiles", default=None
)
_TOKENS = itertools.count(1)


# --------------------------------------------------------------- describing calls
def _arg_profile(params: list[Any], values: list[Any]) -> tuple[Any, ...]:
    out = []
    for p, v in zip(params, values):
        if p.kind == "tensor":
            out.append(TensorMetadata.maybe_from_array(v))
        elif p.kind == "tensor_list":
            out.append(None if v is None else tuple(TensorMetadata.maybe_from_array(e) for e in v))
        else:
            out.append(plain(v))
    return tuple(out)


def _out_leaves(out: Any) -> list[Any]:
    return [leaf for leaf in jax.tree_util.tree_leaves(out)]


def _out_profile(op: Any, out: Any) -> TensorMetadata | tuple[TensorMetadata, ...] | None:
    leaves = _out_leaves(out)
    metas: list[TensorMetadata] = []
    for leaf in leaves:
        m = TensorMetadata.maybe_from_array(leaf)
        if m is None:
            if isinstance(leaf, (bool, int, float)):
                kind = np.bool_ if isinstance(leaf, bool) else np.int64 if isinstance(leaf, int) else np.float64
                m = TensorMetadata(0, jax.dtypes.canonicalize_dtype(kind), default_platform())
            else:
                return None
        metas.append(m)
    tuple_like = isinstance(out, (tuple, list)) or len(metas) != 1
    return tuple(metas) if tuple_like else metas[0]


def _input_shapes(params: list[Any], values: list[Any]) -> list[tuple[tuple[int, int], tuple[Any, ...]]]:
    """``((param index, element index or -1), shape)`` of every array argument."""
    out = []
    for i, (p, v) in enumerate(zip(params, values)):
        if p.kind == "tensor" and v is not None and hasattr(v, "shape"):
            out.append(((i, -1), tuple(v.shape)))
        elif p.kind == "tensor_list" and v is not None:
            for j, e in enumerate(v):
                if e is not None and hasattr(e, "shape"):
                    out.append(((i, j), tuple(e.shape)))
    return out


def _dim_hints(params: list[Any], values: list[Any], out: Any) -> tuple[Any, ...] | None:
    """Per output leaf, per dimension: candidate sources, most specific first."""
    ins = _input_shapes(params, values)
    hints = []
    for leaf in _out_leaves(out):
        shape = tuple(getattr(leaf, "shape", ()))
        per_dim = []
        for d, size in enumerate(shape):
            if type(size) is not int:
                return None  # symbolic sizes: nothing concrete to learn
            same: list[tuple[Any, ...]] = []
            other: list[tuple[Any, ...]] = []
            for (i, j), s in ins:
                for k, n in enumerate(s):
                    if type(n) is int and n == size:
                        (same if k == d else other).append(("arg", i, j, k))
            per_dim.append(tuple(same + other + [("const", size)]))
        hints.append(tuple(per_dim))
    return tuple(hints)


def _merge_hints(a: Any, b: Any) -> Any:
    if a is None or b is None or len(a) != len(b):
        return None
    merged = []
    for la, lb in zip(a, b):
        if len(la) != len(lb):
            return None
        merged.append(tuple(tuple(c for c in ca if c in set(cb)) for ca, cb in zip(la, lb)))
    return tuple(merged)


def record_call(op: Any, values: list[Any], out: Any) -> None:
    """Record the metadata of one op call (called by the core while ``_RECORDING``).

    While profiles are served, a traced call of a served op whose arguments
    match no profile raises :class:`MissingOpProfile` here (traceable ops are
    traced through their body, so this is where the check happens for them).
    """
    params = op.binder.params
    served = _served_profiles(op)
    if served is not None and _is_traced(values):
        _match(op, served, _arg_profile(params, values), values)
    recorders = _RECORDERS.get()
    if not recorders:
        return
    out_prof = _out_profile(op, out)
    if out_prof is None:
        return
    prof = OpProfile(_arg_profile(params, values), out_prof)
    hints = _dim_hints(params, values, out)
    for profiles, seen in recorders:
        key = (op.name, prof)
        known = seen.get(key)
        if known is None:
            new = OpProfile(prof.args_profile, prof.out_profile, hints)
            seen[key] = new
            profiles.setdefault(op.name, set()).add(new)
        elif hints is not None:
            object.__setattr__(known, "dims", _merge_hints(known.dims, hints) if known.dims is not None else hints)


def _is_traced(values: list[Any]) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(values))


@contextlib.contextmanager
def _block() -> Iterator[None]:
    """Count an active recording/serving block (any thread) for the op call fast path."""
    global _RECORDING
    with _BLOCKS_LOCK:
        _BLOCKS[0] += 1
        _RECORDING = True
        hooks.set_call_recorder(record_call)
    try:
        yield
    finally:
        with _BLOCKS_LOCK:
            _BLOCKS[0] -= 1
            _RECORDING = _BLOCKS[0] > 0
            hooks.set_call_recorder(record_call if _RECORDING else None)


@contextlib.contextmanager
def record_op_profiles() -> Iterator[dict[str, set[OpProfile]]]:
    """Record the profile of every op call made inside the block (eager and traced).

    Yields the profiles dict, filled as calls happen.  Only calls made by the
    thread (``contextvars`` context) that entered the block are recorded.  A
    function jitted (and traced) before the block does not call its ops again,
    so it records nothing.

    >>> with record_op_profiles() as profiles:
    ...     pass
    >>> profiles
    {}
    """
    profiles: dict[str, set[OpProfile]] = {}
    token = _RECORDERS.set(_RECORDERS.get() + ((profiles, {}),))
    try:
        with _block():
            yield profiles
    finally:
        _RECORDERS.reset(token)


# --------------------------------------------------------------------- serving
def _served_profiles(op: Any) -> set[OpProfile] | None:
    active = _ACTIVE.get()
    if active is None:
        return None
    return active.get(op.name) or active.get(op.qualname)


def _meta_matches(want: Any, got: Any) -> bool:
    if isinstance(want, TensorMetadata):
        return isinstance(got, TensorMetadata) and want.rank == got.rank and want.dtype == got.dtype
    if isinstance(want, tuple) and isinstance(got, tuple):
        return len(want) == len(got) and all(_meta_matches(w, g) for w, g in zip(want, got))
    if _is_number(want) and _is_number(got):
        return bool(want == got)
    if type(want) is not type(got):
        return False
    try:
        return bool(want == got)
    except Exception:  # noqa: BLE001 - incomparable values do not match
        return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _describe(args: tuple[Any, ...]) -> str:
    def one(a: Any) -> str:
        if isinstance(a, TensorMetadata):
            return f"rank {a.rank} {a.dtype}"
        if isinstance(a, tuple) and a and all(isinstance(e, TensorMetadata) or e is None for e in a):
            return "[" + ", ".join(one(e) for e in a) + "]"
        return repr(a)

    return "(" + ", ".join(one(a) for a in args) + ")"


def _match(op: Any, profs: set[OpProfile], args: tuple[Any, ...], values: list[Any]) -> OpProfile:
    for p in sorted(profs, key=profile_sort_key):
        if len(p.args_profile) == len(args) and all(_meta_matches(w, g) for w, g in zip(p.args_profile, args)):
            return p
    known = "; ".join(_describe(p.args_profile) for p in sorted(profs, key=profile_sort_key))
    raise MissingOpProfile(
        f"{op.name}: no op profile matches the call's arguments {_describe(args)} "
        f"(profiles served by unsafe_generate_fake_kernels for this op: {known or 'none'}); "
        "record one with jaxops.record_op_profiles() on a machine with the op's kernels"
    )


def _new_size(op: Any, k: int) -> Any:
    from jaxops.fake import get_ctx

    try:
        return get_ctx().new_dynamic_size()
    except ImportError:  # data-dependent sizes not available: a plain symbolic size
        (d,) = jax.export.symbolic_shape(f"{op.opname}_out{k}")
        return d


def _serve_shape(op: Any, hint: Any, rank: int, shapes: dict[tuple[int, int], tuple[Any, ...]],
                 in_order: list[tuple[Any, ...]], counter: list[int]) -> tuple[Any, ...]:
    if hint is not None and len(hint) == rank:
        out = []
        for cands in hint:
            size: Any = None
            for c in cands:
                if c[0] == "arg":
                    s = shapes.get((c[1], c[2]))
                    if s is not None and len(s) > c[3]:
                        size = s[c[3]]
                        break
                elif c[0] == "const":
                    size = c[1]
                    break
            if size is None:
                size = _new_size(op, counter[0])
                counter[0] += 1
            out.append(size)
        return tuple(out)
    for s in in_order:
        if len(s) == rank:
            return s
    sizes = []
    for _ in range(rank):
        sizes.append(_new_size(op, counter[0]))
        counter[0] += 1
    return tuple(sizes)


def _make_fake(op: Any, profs: set[OpProfile]) -> Any:
    binder = op.binder
    params = binder.params
    kw_names = [p.name for p in params[binder.n_positional:]]

    def fake(*args: Any, **kwargs: Any) -> Any:
        values = list(args) + [kwargs[k] for k in kw_names]
        prof = _match(op, profs, _arg_profile(params, values), values)
        ins = _input_shapes(params, values)
        shapes = dict(ins)
        in_order = [s for _, s in ins]
        outs = prof.out_profile if isinstance(prof.out_profile, tuple) else (prof.out_profile,)
        hints = prof.dims if prof.dims is not None and len(prof.dims) == len(outs) else [None] * len(outs)
        counter = [0]
        res = [
            jax.ShapeDtypeStruct(_serve_shape(op, h, m.rank, shapes, in_order, counter), m.dtype)
            for m, h in zip(outs, hints)
        ]
        if isinstance(prof.out_profile, tuple):
            if op.function_schema.returns and not op.function_schema.returns_tuple:
                return list(res)  # a Tensor[] return
            return tuple(res)
        return res[0]

    fake.__name__ = f"profile_fake[{op.name}]"
    return fake


def override_fake(op: Any) -> Any:
    """A fake built from the active profiles for ``op``, or None when none apply."""
    profs = _served_profiles(op)
    if profs is None:
        return None
    return _make_fake(op, profs)


hooks.set_fake_override(override_fake)


@contextlib.contextmanager
def unsafe_generate_fake_kernels(op_profiles: dict[str, set[OpProfile]]) -> Iterator[None]:
    """Serve fakes generated from ``op_profiles`` while the block is active.

    They override registered (and annotation-derived) fakes of the ops named in
    ``op_profiles``; a traced call of such an op whose argument metadata
    matches no profile raises :class:`MissingOpProfile`.  "Unsafe" because a
    profile stores ranks, not sizes (see the module docstring for how sizes
    are chosen).

    >>> with unsafe_generate_fake_kernels({}):
    ...     pass
    """
    if not isinstance(op_profiles, dict):
        raise TypeError(
            f"unsafe_generate_fake_kernels expects a dict[str, set[OpProfile]], got {type(op_profiles).__name__}"
        )
    for name, profs in op_profiles.items():
        if not isinstance(name, str) or "::" not in name:
            raise ValueError(f"unsafe_generate_fake_kernels: keys must be op names 'ns::name', got {name!r}")
        if isinstance(profs, OpProfile) or not isinstance(profs, (set, frozenset, list, tuple)):
            raise TypeError(
                f"unsafe_generate_fake_kernels: op_profiles[{name!r}] must be a set of OpProfile, "
                f"got {type(profs).__name__} {cut(repr(profs))}"
            )
        for p in profs:
            if not isinstance(p, OpProfile):
                raise TypeError(f"unsafe_generate_fake_kernels: {name}: expected OpProfile, got {type(p).__name__}")
    snapshot = {k: set(v) for k, v in op_profiles.items()}
    serving = _SERVING.get() + ((snapshot, next(_TOKENS)),)
    merged: dict[str, Any] = {}
    for profiles, _ in serving:  # inner blocks override outer ones, per op
        merged.update(profiles)
    from jaxops.registry import mode_scope

    serving_token = _SERVING.set(serving)
    active_token = _ACTIVE.set(merged)
    try:
        # The served set is part of the trace-cache key (jaxops' and JAX's) of this
        # context: one token per active block, so leaving it restores the earlier caches.
        with mode_scope("served_profiles", tuple(t for _, t in serving)), _block():
            yield None
    finally:
        _ACTIVE.reset(active_token)
        _SERVING.reset(serving_token)
