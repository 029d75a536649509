"""Cost counting for :func:`jaxops.plan`: registered cost functions, FLOPs of primitives, sizes and sums.

:func:`register_cost` records a FLOP count for an op (used instead of counting
the primitives of its body); :func:`prim_flops` counts one primitive
equation (``dot_general``, convolutions, reductions, data movement,
elementwise); :class:`AvalInfo` caches an abstract value's size and bytes and
:class:`Acc` sums ints and symbolic expressions cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr

from jaxops import registry as _registry

#: Cost functions by op name: ``fn(inputs, outputs) -> flops`` (lists of ShapeDtypeStruct).
COSTS: dict[str, Callable[[list[jax.ShapeDtypeStruct], list[jax.ShapeDtypeStruct]], Any]] = {}
#: Bumped by every :func:`register_cost` (invalidates memoized op bodies).
COST_GEN = [0]

#: Primitives that only move data: zero FLOPs.
ZERO_FLOP = frozenset(
    {
        "reshape", "broadcast_in_dim", "squeeze", "expand_dims", "transpose", "slice",
        "dynamic_slice", "dynamic_update_slice", "gather", "concatenate", "pad", "rev",
        "iota", "copy", "copy_p", "convert_element_type", "bitcast_convert_type",
        "device_put", "stop_gradient", "sharding_constraint", "split", "optimization_barrier",
        "squeeze_p", "select_and_gather_add", "zeros_like", "full_like", "empty",
    }
)
#: Primitives counted by their input size.
REDUCTIONS = frozenset(
    {
        "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
        "reduce_xor", "argmax", "argmin", "cumsum", "cumprod", "cummax", "cummin",
        "cumlogsumexp", "reduce_precision", "sort", "top_k",
    }
)
#: Host callbacks and data-dependent calls: FLOPs unknown.
UNKNOWN = frozenset({"pure_callback", "io_callback", "callback", "host_callback", "jaxops_data_dependent"})
#: Primitive names of nested jits (an op call is one named after the op).
JIT_NAMES = frozenset({"jit", "pjit"})


def register_cost(
    op_or_name: Any,
    fn: Callable[[list[jax.ShapeDtypeStruct], list[jax.ShapeDtypeStruct]], Any] | None = None,
) -> Any:
    """Register a FLOP count for an op, used by :func:`plan` instead of counting primitives.

    ``fn(inputs, outputs)`` gets the call's array inputs and outputs as lists of
    ``jax.ShapeDtypeStruct`` and returns an int (or a symbolic expression).
    Works as a decorator too.

    >>> import jaxops
    >>> # @jaxops.plan.register_cost("mylib::matmul")
    >>> # def _(inputs, outputs):
    >>> #     (m, k), (_, n) = inputs[0].shape, inputs[1].shape
    >>> #     return 2 * m * k * n
    """
    name = op_or_name if isinstance(op_or_name, str) else _registry.as_op(op_or_name).name

    def inner(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise TypeError(f"{name}: register_cost needs a callable, got {type(f).__name__}")
        COSTS[name] = f
        COST_GEN[0] += 1
        return f

    return inner if fn is None else inner(fn)



# ---------------------------------------------------------------- small helpers
class AvalInfo:
    """Cached facts about one abstract value: its ShapeDtypeStruct, element count, bytes."""

    __slots__ = ("sds", "size", "nbytes")

    def __init__(self, aval: Any) -> None:
        shape = tuple(getattr(aval, "shape", ()))
        dtype = getattr(aval, "dtype", None)
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            itemsize = getattr(dtype, "itemsize", 0) or 0
        self.sds = jax.ShapeDtypeStruct(shape, dtype)
        self.size = math.prod(shape)
        self.nbytes = self.size * itemsize


_AVAL_CACHE: dict[Any, AvalInfo] = {}


def aval_info(aval: Any) -> AvalInfo:
    """:class:`AvalInfo` of an abstract value (cached per aval)."""
    try:
        return _AVAL_CACHE[aval]
    except KeyError:
        pass
    except TypeError:
        return AvalInfo(aval)
    info = _AVAL_CACHE[aval] = AvalInfo(aval)
    if len(_AVAL_CACHE) > 50_000:
        _AVAL_CACHE.clear()
    return info


class Acc:
    """A sum of ints and symbolic expressions, cheap to add to.

    Symbolic dimension arithmetic costs tens of microseconds per operation, so
    symbolic terms are counted per distinct object and multiplied out once in
    :meth:`value`.  Adding ``None`` marks the sum as partly unknown (``value``
    then gives the sum of the known terms; ``unknown`` counts the others).
    """

    __slots__ = ("i", "terms", "unknown")

    def __init__(self) -> None:
        self.i = 0
        self.terms: dict[int, list[Any]] = {}
        self.unknown = 0

    def add(self, v: Any, n: int = 1) -> None:
        if type(v) is int:
            self.i += v * n
        elif v is None:
            self.unknown += 1
        elif isinstance(v, Acc):
            self.i += v.i * n
            self.unknown += v.unknown
            for k, (t, c) in v.terms.items():
                self.add_term(k, t, c * n)
        else:
            self.add_term(id(v), v, n)

    def add_term(self, k: int, t: Any, n: int) -> None:
        cur = self.terms.get(k)
        if cur is None:
            self.terms[k] = [t, n]
        else:
            cur[1] += n

    def value(self) -> Any:
        out: Any = self.i
        for t, c in self.terms.values():
            out = out + (t if c == 1 else t * c)
        return out


def sub_jaxprs(eqn: Any) -> list[tuple[Any, Any]]:
    """``(jaxpr, multiplier)`` of every jaxpr nested in an equation's params."""
    name = eqn.primitive.name
    out: list[tuple[Any, Any]] = []
    mult: Any = 1
    if name == "scan":
        mult = eqn.params.get("length", 1)
    elif name == "while":
        mult = None
    for v in eqn.params.values():
        if isinstance(v, (tuple, list)):
            for w in v:
                j = as_jaxpr(w)
                if j is not None:
                    out.append((j, mult))
        else:
            j = as_jaxpr(v)
            if j is not None:
                out.append((j, mult))
    return out


def as_jaxpr(v: Any) -> Any:
    """The open jaxpr of a (closed) jaxpr param value, else None."""
    if isinstance(v, ClosedJaxpr):
        return v.jaxpr
    if isinstance(v, Jaxpr):
        return v
    return None


def prim_flops(eqn: Any) -> Any:
    """FLOPs of one primitive equation without nested jaxprs (None when unknown)."""
    name = eqn.primitive.name
    if name in ZERO_FLOP:
        return 0
    if name in UNKNOWN:
        return None
    outs = eqn.outvars
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        contracted = math.prod(lhs[d] for d in lc)
        return 2 * aval_info(outs[0].aval).size * contracted
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        rhs_spec = getattr(dn, "rhs_spec", None)
        if rhs_spec is None:
            kernel = math.prod(rhs[1:])
        else:
            kernel = math.prod(rhs[d] for d in rhs_spec[1:])
        return 2 * aval_info(outs[0].aval).size * kernel
    vs = eqn.invars if name in REDUCTIONS else outs
    if len(vs) == 1:
        return aval_info(vs[0].aval).size
    acc = Acc()
    for v in vs:
        acc.add(aval_info(v.aval).size)
    return acc.value()
