"""Profile data types: :class:`TensorMetadata`, :class:`OpProfile`, :class:`MissingOpProfile`.

The values that :mod:`jaxops.profiles` records, saves, loads and serves (see
that module's docstring); shared by :mod:`jaxops.profile_fakes` (recording and
serving) and :mod:`jaxops.profile_loader` (the bounded YAML reader).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

#: Largest rank a :class:`TensorMetadata` (and a loaded profile) may have (NumPy's limit).
MAX_RANK = 64
#: Longest excerpt of a bad value quoted in an error message.
MAX_QUOTE = 80


def cut(text: str, limit: int = MAX_QUOTE) -> str:
    """``text`` cut to ``limit`` characters (ending in ``...`` when cut).

    >>> cut("abcdef", 5)
    'ab...'
    """
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            raise ValueError(f"TensorMetadata: rank must be a non-negative int, got {cut(repr(rank))}")
        if rank > MAX_RANK:
            raise ValueError(f"TensorMetadata: rank must be at most {MAX_RANK} (MAX_RANK), got {int(rank)}")
        object.__setattr__(self, "rank", int(rank))
        try:
            dtype = np.dtype(jax.numpy.dtype(self.dtype))
        except (TypeError, ValueError):
            raise ValueError(
                f"TensorMetadata: dtype must be a dtype or a dtype name such as 'float32', got {cut(repr(self.dtype))}"
            ) from None
        object.__setattr__(self, "dtype", dtype)
        if not isinstance(self.device, (str, jax.Device)):
            raise TypeError(
                "TensorMetadata: device must be a platform name such as 'cpu' or a jax.Device, "
                f"got {type(self.device).__name__} {cut(repr(self.device))}"
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
        device = default_platform()
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
            try:
                device = _platform(next(iter(x.devices())))
            except Exception:  # noqa: BLE001 - deleted/donated array: keep the default
                pass
        return TensorMetadata(len(x.shape), x.dtype, device)


def default_platform() -> str:
    """The platform of the first JAX device (``"cpu"`` when none can be listed)."""
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
                f"value of every other argument), got {type(args).__name__} {cut(repr(args))}"
            )
        values = tuple(plain(v) for v in args)
        for i, v in enumerate(values):
            try:
                hash(v)
            except TypeError:
                raise TypeError(
                    f"OpProfile: args_profile[{i}] must be a TensorMetadata or a hashable plain value, "
                    f"got {type(v).__name__} {cut(repr(v))}"
                ) from None
        object.__setattr__(self, "args_profile", values)
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


def plain(v: Any) -> Any:
    """A hashable, comparable form of a non-array argument (lists become tuples)."""
    if isinstance(v, (list, tuple)):
        return tuple(plain(e) for e in v)
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


def profile_sort_key(p: OpProfile) -> str:
    """The key that orders profiles deterministically (matching order, saved order)."""
    return repr(p)
