"""Fake profiles: op signatures recorded from real calls, served as fakes.

PyTorch's ``torch._library.fake_profile`` in JAX terms.  A profile says "called
with arrays of these ranks and dtypes (and these other arguments), the op
returned arrays of these ranks and dtypes".  Recorded on a machine that has the
op's kernels, saved to YAML, loaded elsewhere, profiles let
:func:`jaxops.plan` / ``jax.eval_shape`` run through ops whose kernels (and
fakes) are not installed there:

>>> import io, jax, numpy as np, jaxops
>>> @jaxops.custom_op("profdoc::double", mutates_args=(), host=True)
... def double(x: jax.Array) -> jax.Array:
...     return 2 * x
>>> with jaxops.record_op_profiles() as profiles:
...     _ = double(np.ones((2, 3), np.float32))
>>> buf = io.StringIO(); jaxops.save_op_profiles(profiles, buf); _ = buf.seek(0)
>>> loaded = jaxops.load_op_profiles(buf)
>>> with jaxops.unsafe_generate_fake_kernels(loaded):
...     jax.eval_shape(double, jax.ShapeDtypeStruct((5, 3), np.float32))
ShapeDtypeStruct(shape=(5, 3), dtype=float32)

How output shapes are chosen (the "unsafe" part; a profile stores ranks, not
sizes): recorded profiles also carry *dimension hints* (which input dimension,
or which constant, every output dimension equalled in every recorded call; the
hint is not part of a profile's identity).  A served fake uses them, so a
matmul-like op recorded as ``(m, k) @ (k, n) -> (m, n)`` plans as such.  With no
hint (a hand-made profile), an output whose rank equals an array argument's
rank takes the shape of the first such argument (the elementwise guess);
otherwise every dimension is a fresh data-dependent size
(``get_ctx().new_dynamic_size()``).

Matching: array arguments by rank and dtype (the device is recorded but not
matched, since abstract values carry no device), other arguments by value.

This module plugs into the op core through :mod:`jaxops.hooks`: :func:`_override_fake`
is the fake override (consulted when an op needs its fake) and :func:`_record_call`
the call recorder (installed while :data:`_RECORDING`); both receive the op's
definition.
This module must not import ``jaxops.op`` at module level.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import io
import itertools
import os
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxops import hooks

__all__ = [
    "MissingOpProfile",
    "OpProfile",
    "TensorMetadata",
    "load_op_profiles",
    "record_op_profiles",
    "save_op_profiles",
    "unsafe_generate_fake_kernels",
]

#: True while a ``record_op_profiles()`` or ``unsafe_generate_fake_kernels()``
#: block is active in any thread (checked on every op call; the core then calls
#: ``_record_call``, which looks at the blocks of the calling context only).
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

#: Layout of the profile file; bump it whenever the layout changes.
_FORMAT = 1
#: Largest rank a :class:`TensorMetadata` (and a loaded profile) may have (NumPy's limit).
MAX_RANK = 64



class MissingOpProfile(RuntimeError):
    """An op call matched none of the profiles served by ``unsafe_generate_fake_kernels``.

    >>> issubclass(MissingOpProfile, RuntimeError)
    True
    """


def _platform(device: Any) -> str:
    if isinstance(device, str):
        return {"cuda": "gpu", "rocm": "gpu"}.get(device.split(":")[0], device.split(":")[0])
    platform = getattr(device, "platform", None)
    if isinstance(platform, str):
        return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    return str(device)


@dataclasses.dataclass(frozen=True)
class TensorMetadata:
    """Rank, dtype and device (platform: ``"cpu"``, ``"gpu"``, ``"tpu"``) of one array.

    ``dtype`` accepts anything ``np.dtype`` / ``jnp.dtype`` accepts and is stored
    as a ``numpy.dtype``; ``device`` accepts a ``jax.Device`` or a string.

    >>> TensorMetadata(2, "float32", "cpu")
    TensorMetadata(rank=2, dtype=dtype('float32'), device='cpu')
    """

    rank: int
    dtype: Any
    device: str = "cpu"

    def __post_init__(self) -> None:
        rank = self.rank
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
            raise ValueError(f"TensorMetadata: rank must be a non-negative int, got {_cut(repr(rank))}")
        if rank > MAX_RANK:
            raise ValueError(f"TensorMetadata: rank must be at most {MAX_RANK} (MAX_RANK), got {int(rank)}")
        object.__setattr__(self, "rank", int(rank))
        try:
            dtype = np.dtype(jax.numpy.dtype(self.dtype))
        except (TypeError, ValueError):
            raise ValueError(
                f"TensorMetadata: dtype must be a dtype or a dtype name such as 'float32', got {_cut(repr(self.dtype))}"
            ) from None
        object.__setattr__(self, "dtype", dtype)
        if not isinstance(self.device, (str, jax.Device)):
            raise TypeError(
                "TensorMetadata: device must be a platform name such as 'cpu' or a jax.Device, "
                f"got {type(self.device).__name__} {_cut(repr(self.device))}"
            )
        object.__setattr__(self, "device", _platform(self.device))

    @staticmethod
    def maybe_from_array(x: Any) -> TensorMetadata | None:
        """The metadata of an array-like (None for anything else).

        >>> TensorMetadata.maybe_from_array(np.zeros((2, 3), np.int32)).rank
        2
        """
        if x is None or not hasattr(x, "shape") or not hasattr(x, "dtype"):
            return None
        device = _default_platform()
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
            try:
                device = _platform(next(iter(x.devices())))
            except Exception:  # noqa: BLE001 - deleted/donated array: keep the default
                pass
        return TensorMetadata(len(x.shape), x.dtype, device)


def _default_platform() -> str:
    try:
        return _platform(jax.devices()[0])
    except Exception:  # noqa: BLE001
        return "cpu"


@dataclasses.dataclass(frozen=True)
class OpProfile:
    """One recorded signature of an op: argument metadata -> output metadata.

    ``args_profile`` holds, in schema order, a :class:`TensorMetadata` per array
    argument (a tuple of them for a list of arrays, None for a missing optional
    array) and the plain value of every other argument.  ``out_profile`` is a
    :class:`TensorMetadata` or a tuple of them.  ``dims`` (hints for output
    sizes, see the module docstring) does not take part in equality or hashing.

    >>> OpProfile((TensorMetadata(2, "float32", "cpu"), 1.0), TensorMetadata(2, "float32", "cpu"))
    ... # doctest: +ELLIPSIS
    OpProfile(args_profile=(TensorMetadata(rank=2, ...), 1.0), out_profile=TensorMetadata(rank=2, ...))
    """

    args_profile: tuple[Any, ...]
    out_profile: TensorMetadata | tuple[TensorMetadata, ...]
    dims: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        args = self.args_profile
        if not isinstance(args, (tuple, list)):
            raise TypeError(
                "OpProfile: args_profile must be a tuple (a TensorMetadata per array argument, the plain "
                f"value of every other argument), got {type(args).__name__} {_cut(repr(args))}"
            )
        plain = tuple(_plain(v) for v in args)
        for i, v in enumerate(plain):
            try:
                hash(v)
            except TypeError:
                raise TypeError(
                    f"OpProfile: args_profile[{i}] must be a TensorMetadata or a hashable plain value, "
                    f"got {type(v).__name__} {_cut(repr(v))}"
                ) from None
        object.__setattr__(self, "args_profile", plain)
        out = self.out_profile
        if isinstance(out, list):
            object.__setattr__(self, "out_profile", tuple(out))
        out = self.out_profile
        leaves = out if isinstance(out, tuple) else (out,)
        if not leaves:
            raise TypeError("OpProfile: out_profile must be a TensorMetadata or a non-empty tuple of them, got ()")
        for o in leaves:
            if not isinstance(o, TensorMetadata):
                raise TypeError(
                    f"OpProfile: out_profile must be a TensorMetadata or a tuple of them, got {type(o).__name__}"
                )


def _plain(v: Any) -> Any:
    """A hashable, comparable form of a non-array argument (lists become tuples)."""
    if isinstance(v, (list, tuple)):
        return tuple(_plain(e) for e in v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, jax.Device):
        return _platform(v)
    if isinstance(v, type) or isinstance(v, np.dtype):
        try:
            return np.dtype(jax.numpy.dtype(v))
        except TypeError:
            return v
    return v


# --------------------------------------------------------------- describing calls
def _arg_profile(params: list[Any], values: list[Any]) -> tuple[Any, ...]:
    out = []
    for p, v in zip(params, values):
        if p.kind == "tensor":
            out.append(TensorMetadata.maybe_from_array(v))
        elif p.kind == "tensor_list":
            out.append(None if v is None else tuple(TensorMetadata.maybe_from_array(e) for e in v))
        else:
            out.append(_plain(v))
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
                m = TensorMetadata(0, jax.dtypes.canonicalize_dtype(kind), _default_platform())
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


def _record_call(op: Any, values: list[Any], out: Any) -> None:
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
        hooks.set_call_recorder(_record_call)
    try:
        yield
    finally:
        with _BLOCKS_LOCK:
            _BLOCKS[0] -= 1
            _RECORDING = _BLOCKS[0] > 0
            hooks.set_call_recorder(_record_call if _RECORDING else None)


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
    for p in sorted(profs, key=_profile_sort_key):
        if len(p.args_profile) == len(args) and all(_meta_matches(w, g) for w, g in zip(p.args_profile, args)):
            return p
    known = "; ".join(_describe(p.args_profile) for p in sorted(profs, key=_profile_sort_key))
    raise MissingOpProfile(
        f"{op.name}: no op profile matches the call's arguments {_describe(args)} "
        f"(profiles served by unsafe_generate_fake_kernels for this op: {known or 'none'}); "
        "record one with jaxops.record_op_profiles() on a machine with the op's kernels"
    )


def _profile_sort_key(p: OpProfile) -> str:
    return repr(p)


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


def _override_fake(op: Any) -> Any:
    """A fake built from the active profiles for ``op``, or None when none apply."""
    profs = _served_profiles(op)
    if profs is None:
        return None
    return _make_fake(op, profs)


hooks.set_fake_override(_override_fake)


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
                f"got {type(profs).__name__} {_cut(repr(profs))}"
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


# -------------------------------------------------------------------- save/load
def _enc_meta(m: TensorMetadata | None) -> Any:
    if m is None:
        return None
    return {"rank": m.rank, "dtype": m.dtype.name, "device": m.device}


def _enc_value(v: Any, op_name: str) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, tuple):
        return [_enc_value(e, op_name) for e in v]
    if isinstance(v, np.dtype):
        return {"dtype": v.name}
    raise ValueError(f"{op_name}: cannot save argument value {v!r} ({type(v).__name__}) in an op profile")


def _enc_arg(a: Any, op_name: str) -> Any:
    if isinstance(a, TensorMetadata):
        return {"tensor": _enc_meta(a)}
    if isinstance(a, tuple) and a and all(isinstance(e, TensorMetadata) or e is None for e in a) and any(
        isinstance(e, TensorMetadata) for e in a
    ):
        return {"tensors": [_enc_meta(e) for e in a]}
    return {"value": _enc_value(a, op_name)}


def _enc_hints(h: Any) -> Any:
    if h is None:
        return None
    return [[[list(c) for c in cands] for cands in leaf] for leaf in h]


def _check_profiles_arg(op_profiles: Any, where: str) -> dict[str, list[OpProfile]]:
    """``op_profiles`` as ``{name: [OpProfile, ...]}``, or a TypeError/ValueError naming the bad part."""
    if not isinstance(op_profiles, dict):
        raise TypeError(
            f"{where}: op_profiles must be a dict[str, set[OpProfile]] (op name -> profiles), "
            f"got {type(op_profiles).__name__} {_cut(repr(op_profiles))}"
        )
    out: dict[str, list[OpProfile]] = {}
    for name, profs in op_profiles.items():
        if not isinstance(name, str) or "::" not in name:
            raise ValueError(f"{where}: op_profiles keys must be op names 'ns::name', got {_cut(repr(name))}")
        if isinstance(profs, OpProfile) or not isinstance(profs, (set, frozenset, list, tuple)):
            raise TypeError(
                f"{where}: op_profiles[{name!r}] must be a set of OpProfile, got {type(profs).__name__} "
                f"{_cut(repr(profs))}"
            )
        for p in profs:
            if not isinstance(p, OpProfile):
                raise TypeError(
                    f"{where}: op_profiles[{name!r}] must hold OpProfile objects, got {type(p).__name__} "
                    f"{_cut(repr(p))}"
                )
        out[name] = list(profs)
    return out


def _to_yaml(op_profiles: dict[str, set[OpProfile]]) -> str:
    import yaml

    from jaxops.version import __version__

    checked = _check_profiles_arg(op_profiles, "save_op_profiles")
    operators: dict[str, Any] = {}
    for name in sorted(checked):
        entries = []
        for p in sorted(checked[name], key=_profile_sort_key):
            if not isinstance(p, OpProfile):
                raise TypeError(f"save_op_profiles: {name}: expected OpProfile, got {type(p).__name__}")
            out = p.out_profile
            entries.append({
                "args_profile": [_enc_arg(a, name) for a in p.args_profile],
                "out_profile": [_enc_meta(o) for o in out] if isinstance(out, tuple) else _enc_meta(out),
                "dims": _enc_hints(p.dims),
            })
        operators[name] = entries
    doc = {"version": __version__, "format": _FORMAT, "operators": operators}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


# ------------------------------------------------------------- loading, bounded
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
#: Longest excerpt of a bad value quoted in an error message.
_MAX_QUOTE = 80
_MAX_MESSAGE = 1_000

_SAFE_TAGS = frozenset(
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq")
)


def _quote(v: Any) -> str:
    """``repr(v)`` cut to a readable length (never expands a huge structure)."""
    if isinstance(v, dict):
        return f"a mapping of {len(v)} keys" if len(v) > 8 else _cut(repr(v))
    if isinstance(v, list):
        return f"a list of {len(v)} items" if len(v) > 8 else _cut(repr(v))
    return _cut(repr(v))


def _cut(text: str, limit: int = _MAX_QUOTE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad_file(message: str) -> ValueError:
    return ValueError(_cut("not a valid op profile file: " + message, _MAX_MESSAGE))


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
                    raise _bad_file(f"the alias *{_cut(str(event.anchor))} refers to a node that contains it "
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
                    f"the YAML tag {_cut(str(tag))!s} is not allowed: only plain YAML is accepted "
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
            f"only plain YAML is accepted (Python object tags are refused): {_cut(str(e), 400)}"
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
            raise _bad_file(f"{path}: {_cut(repr(v))} is out of range ({lo}..{hi})")
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
        if version is None or not _compatible(version, fmt):
            raise RuntimeError(
                f"Unable to load outdated profile. It was saved with jaxops version {_cut(repr(version))} "
                f"(format {fmt!r}) but the current jaxops version is {__version__!r} "
                f"(format {_FORMAT}); record the profiles again with this version"
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
            where = f"operators[{_cut(repr(name))}]"
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


def _compatible(version: str, fmt: Any) -> bool:
    """Whether a file written by jaxops ``version`` in format ``fmt`` can be read.

    The ``format`` number changes whenever the layout does; in addition, before
    1.0 every minor release may change it (semantic versioning for 0.x), so a
    0.x file needs the same major.minor, a later one the same major.
    """
    from jaxops.version import __version__

    if fmt != _FORMAT:
        return False
    theirs, ours = _version_tuple(version), _version_tuple(__version__)
    if theirs is None or ours is None:
        return False
    if ours[0] == 0:
        return theirs == ours
    return theirs[0] == ours[0]


def _from_yaml(text: str) -> dict[str, set[OpProfile]]:
    return _Decoder().document(_parse_limited(text))

def save_op_profiles(op_profiles: dict[str, set[OpProfile]], f: Any) -> None:
    """Write profiles as YAML to a path or a (text or binary) file object.

    >>> buf = io.StringIO(); save_op_profiles({}, buf); buf.getvalue().splitlines()[0]
    'version: 0.1.0'
    """
    text = _to_yaml(op_profiles)
    if isinstance(f, (str, os.PathLike)):
        with open(os.fspath(f), "w", encoding="utf-8") as fh:
            fh.write(text)
    elif isinstance(f, io.TextIOBase):
        f.write(text)
    elif hasattr(f, "write"):
        try:
            f.write(text.encode("utf-8"))
        except TypeError:
            f.write(text)
    else:
        raise TypeError(f"save_op_profiles: f must be a path or a file object, got {type(f).__name__}")


def load_op_profiles(f: Any) -> dict[str, set[OpProfile]]:
    """Read profiles written by :func:`save_op_profiles` (path or file object).

    Only plain YAML: a file with Python object tags raises ``ValueError`` and
    runs nothing; one from an incompatible jaxops version (another ``format``,
    or for 0.x another minor version) raises ``RuntimeError`` ("Unable to load
    outdated profile").  A file past the limits (:data:`MAX_FILE_BYTES`,
    :data:`MAX_NODES`, :data:`MAX_ALIASES`, :data:`MAX_DEPTH`, :data:`MAX_RANK`,
    :data:`MAX_OPS`, :data:`MAX_PROFILES`) or with a field of the wrong type
    raises ``ValueError`` naming the limit or the field, before anything is built.

    >>> load_op_profiles(io.StringIO("version: 0.1.0\\nformat: 1\\noperators: {}\\n"))
    {}
    """
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
    return _from_yaml(text)
