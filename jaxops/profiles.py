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
Where things live: the data types in :mod:`jaxops.profile_types`, recording
and serving (the hooks into the op core) in :mod:`jaxops.profile_fakes`, the
bounded YAML reader and its limits in :mod:`jaxops.profile_loader`; this module
is the public API (everything is importable from here) and the YAML writer.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from jaxops.profile_fakes import record_op_profiles, unsafe_generate_fake_kernels
from jaxops.profile_loader import (  # noqa: F401 - limits re-exported
    FORMAT,
    MAX_ALIASES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_OPS,
    MAX_PROFILES,
    read_profiles,
)
from jaxops.profile_types import (  # noqa: F401 - MAX_RANK re-exported
    MAX_RANK,
    MissingOpProfile,
    OpProfile,
    TensorMetadata,
    cut,
    profile_sort_key,
)

__all__ = [
    "MissingOpProfile",
    "OpProfile",
    "TensorMetadata",
    "load_op_profiles",
    "record_op_profiles",
    "save_op_profiles",
    "unsafe_generate_fake_kernels",
]

# The limits of load_op_profiles (MAX_*) are re-exported here for reading; they live,
# and are patched, in jaxops.profile_loader (MAX_RANK in jaxops.profile_types).


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
            f"got {type(op_profiles).__name__} {cut(repr(op_profiles))}"
        )
    out: dict[str, list[OpProfile]] = {}
    for name, profs in op_profiles.items():
        if not isinstance(name, str) or "::" not in name:
            raise ValueError(f"{where}: op_profiles keys must be op names 'ns::name', got {cut(repr(name))}")
        if isinstance(profs, OpProfile) or not isinstance(profs, (set, frozenset, list, tuple)):
            raise TypeError(
                f"{where}: op_profiles[{name!r}] must be a set of OpProfile, got {type(profs).__name__} "
                f"{cut(repr(profs))}"
            )
        for p in profs:
            if not isinstance(p, OpProfile):
                raise TypeError(
                    f"{where}: op_profiles[{name!r}] must hold OpProfile objects, got {type(p).__name__} "
                    f"{cut(repr(p))}"
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
        for p in sorted(checked[name], key=profile_sort_key):
            if not isinstance(p, OpProfile):
                raise TypeError(f"save_op_profiles: {name}: expected OpProfile, got {type(p).__name__}")
            out = p.out_profile
            entries.append({
                "args_profile": [_enc_arg(a, name) for a in p.args_profile],
                "out_profile": [_enc_meta(o) for o in out] if isinstance(out, tuple) else _enc_meta(out),
                "dims": _enc_hints(p.dims),
            })
        operators[name] = entries
    doc = {"version": __version__, "format": FORMAT, "operators": operators}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)




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
    return read_profiles(f)
