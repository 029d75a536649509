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
import dataclasses
import io
import itertools
import os
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
#: block is active (checked on every op call; the core then calls ``_record_call``).
_RECORDING = False

#: Profiles served as fakes by ``unsafe_generate_fake_kernels``; None when inactive.
_ACTIVE: dict[str, Any] | None = None

#: Active recorders (innermost last): each is (profiles dict, {(name, profile): profile}).
_RECORDERS: list[tuple[dict[str, set[OpProfile]], dict[tuple[str, OpProfile], OpProfile]]] = []

#: Active served profile sets (innermost last).
_SERVING: list[dict[str, set[OpProfile]]] = []
_SERVING_TOKENS: list[int] = []
_TOKENS = itertools.count(1)

_FORMAT = 1



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
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, np.integer)) or self.rank < 0:
            raise ValueError(f"TensorMetadata: rank must be a non-negative int, got {self.rank!r}")
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "dtype", np.dtype(jax.numpy.dtype(self.dtype)))
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
        object.__setattr__(self, "args_profile", tuple(_plain(v) for v in self.args_profile))
        out = self.out_profile
        if isinstance(out, list):
            object.__setattr__(self, "out_profile", tuple(out))
        out = self.out_profile
        leaves = out if isinstance(out, tuple) else (out,)
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
    if _ACTIVE is not None and _served_profiles(op) is not None and _is_traced(values):
        _match(op, _served_profiles(op), _arg_profile(params, values), values)
    if not _RECORDERS:
        return
    out_prof = _out_profile(op, out)
    if out_prof is None:
        return
    prof = OpProfile(_arg_profile(params, values), out_prof)
    hints = _dim_hints(params, values, out)
    for profiles, seen in _RECORDERS:
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


def _set_recording() -> None:
    global _RECORDING
    _RECORDING = bool(_RECORDERS) or _ACTIVE is not None
    hooks.set_call_recorder(_record_call if _RECORDING else None)


@contextlib.contextmanager
def record_op_profiles() -> Iterator[dict[str, set[OpProfile]]]:
    """Record the profile of every op call made inside the block (eager and traced).

    Yields the profiles dict, filled as calls happen.  A function jitted (and
    traced) before the block does not call its ops again, so it records nothing.

    >>> with record_op_profiles() as profiles:
    ...     pass
    >>> profiles
    {}
    """
    profiles: dict[str, set[OpProfile]] = {}
    entry = (profiles, {})
    _RECORDERS.append(entry)
    _set_recording()
    try:
        yield profiles
    finally:
        _RECORDERS.remove(entry)
        _set_recording()


# --------------------------------------------------------------------- serving
def _served_profiles(op: Any) -> set[OpProfile] | None:
    if _ACTIVE is None:
        return None
    return _ACTIVE.get(op.name) or _ACTIVE.get(op.qualname)


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


def _refresh_active() -> None:
    global _ACTIVE
    if not _SERVING:
        _ACTIVE = None
    else:
        merged: dict[str, Any] = {}
        for profiles in _SERVING:  # inner blocks override outer ones, per op
            merged.update(profiles)
        _ACTIVE = merged
    _set_recording()
    from jaxops.registry import set_mode

    # The served set is part of every trace-cache key (jaxops' and JAX's): one token
    # per active block, so leaving every block restores the earlier caches.
    set_mode("served_profiles", tuple(_SERVING_TOKENS) or None)


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
        for p in profs:
            if not isinstance(p, OpProfile):
                raise TypeError(f"unsafe_generate_fake_kernels: {name}: expected OpProfile, got {type(p).__name__}")
    snapshot = {k: set(v) for k, v in op_profiles.items()}
    token = next(_TOKENS)
    _SERVING.append(snapshot)
    _SERVING_TOKENS.append(token)
    _refresh_active()
    try:
        yield None
    finally:
        _SERVING.remove(snapshot)
        _SERVING_TOKENS.remove(token)
        _refresh_active()


# -------------------------------------------------------------------- save/load
def _enc_meta(m: TensorMetadata | None) -> Any:
    if m is None:
        return None
    return {"rank": m.rank, "dtype": m.dtype.name, "device": m.device}


def _dec_meta(d: Any) -> TensorMetadata | None:
    if d is None:
        return None
    if not isinstance(d, dict) or set(d) - {"rank", "dtype", "device"} or "rank" not in d or "dtype" not in d:
        raise ValueError(f"invalid tensor metadata in op profile file: {d!r}")
    return TensorMetadata(d["rank"], d["dtype"], d.get("device", "cpu"))


def _enc_value(v: Any, op_name: str) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, tuple):
        return [_enc_value(e, op_name) for e in v]
    if isinstance(v, np.dtype):
        return {"dtype": v.name}
    raise ValueError(f"{op_name}: cannot save argument value {v!r} ({type(v).__name__}) in an op profile")


def _dec_value(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_dec_value(e) for e in v)
    if isinstance(v, dict):
        if set(v) == {"dtype"}:
            return np.dtype(jax.numpy.dtype(v["dtype"]))
        raise ValueError(f"invalid argument value in op profile file: {v!r}")
    return v


def _enc_arg(a: Any, op_name: str) -> Any:
    if isinstance(a, TensorMetadata):
        return {"tensor": _enc_meta(a)}
    if isinstance(a, tuple) and a and all(isinstance(e, TensorMetadata) or e is None for e in a) and any(
        isinstance(e, TensorMetadata) for e in a
    ):
        return {"tensors": [_enc_meta(e) for e in a]}
    return {"value": _enc_value(a, op_name)}


def _dec_arg(d: Any) -> Any:
    if not isinstance(d, dict) or len(d) != 1:
        raise ValueError(f"invalid argument entry in op profile file: {d!r}")
    ((k, v),) = d.items()
    if k == "tensor":
        return _dec_meta(v)
    if k == "tensors":
        return tuple(_dec_meta(e) for e in v)
    if k == "value":
        return _dec_value(v)
    raise ValueError(f"invalid argument entry in op profile file: {d!r}")


def _enc_hints(h: Any) -> Any:
    if h is None:
        return None
    return [[[list(c) for c in cands] for cands in leaf] for leaf in h]


def _dec_hints(h: Any) -> Any:
    if h is None:
        return None
    return tuple(tuple(tuple(tuple(c) for c in cands) for cands in leaf) for leaf in h)


def _to_yaml(op_profiles: dict[str, set[OpProfile]]) -> str:
    import yaml

    from jaxops.version import __version__

    operators: dict[str, Any] = {}
    for name in sorted(op_profiles):
        entries = []
        for p in sorted(op_profiles[name], key=_profile_sort_key):
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


def _from_yaml(text: str) -> dict[str, set[OpProfile]]:
    import yaml

    from jaxops.version import __version__

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(
            f"not a valid op profile file (only plain YAML is accepted; Python object tags are refused): {e}"
        ) from None
    if not isinstance(doc, dict):
        raise ValueError(f"not a valid op profile file: expected a mapping at top level, got {type(doc).__name__}")
    version = doc.get("version")
    ours = __version__
    fmt = doc.get("format")
    if (
        not isinstance(version, str)
        or version.split(".")[0] != ours.split(".")[0]
        or fmt != _FORMAT
    ):
        raise RuntimeError(
            f"Unable to load outdated profile. It was saved with jaxops version {version!r} "
            f"(format {fmt!r}) but the current jaxops version is {ours!r} (format {_FORMAT}); "
            "record the profiles again with this version"
        )
    operators = doc.get("operators") or {}
    if not isinstance(operators, dict):
        raise ValueError("not a valid op profile file: 'operators' must be a mapping")
    out: dict[str, set[OpProfile]] = {}
    for name, entries in operators.items():
        profs = set()
        for e in entries or []:
            if not isinstance(e, dict) or "args_profile" not in e or "out_profile" not in e:
                raise ValueError(f"not a valid op profile file: bad entry for {name}: {e!r}")
            o = e["out_profile"]
            out_prof = tuple(_dec_meta(x) for x in o) if isinstance(o, list) else _dec_meta(o)
            profs.add(OpProfile(tuple(_dec_arg(a) for a in e["args_profile"]), out_prof, _dec_hints(e.get("dims"))))
        out[str(name)] = profs
    return out


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
        raise ValueError(f"save_op_profiles: expected a path or a file object, got {type(f).__name__}")


def load_op_profiles(f: Any) -> dict[str, set[OpProfile]]:
    """Read profiles written by :func:`save_op_profiles` (path or file object).

    Only plain YAML (``yaml.safe_load``): a file with Python object tags raises
    ``ValueError`` and runs nothing; one from an incompatible jaxops version
    raises ``RuntimeError`` ("Unable to load outdated profile").

    >>> load_op_profiles(io.StringIO("version: 0.1.0\\nformat: 1\\noperators: {}\\n"))
    {}
    """
    if isinstance(f, (str, os.PathLike)):
        with open(os.fspath(f), encoding="utf-8") as fh:
            text = fh.read()
    elif hasattr(f, "read"):
        data = f.read()
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    else:
        raise ValueError(f"load_op_profiles: expected a path or a file object, got {type(f).__name__}")
    return _from_yaml(text)
