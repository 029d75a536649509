"""Peak memory of a planned program: a program-order liveness estimate (``Plan.peak_bytes``, ``Plan.memory_timeline``).

:func:`memory_profile` gives the peak and the live bytes per top-level step,
:func:`peak_bytes` the peak alone; with symbolic shapes :func:`max_value`
combines step peaks JAX cannot order.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.extend.core import DropVar, Literal

from jaxops.plan_costs import JIT_NAMES, Acc, aval_info, sub_jaxprs
from jaxops.plan_walk import eqn_scope, phase


class _Max:
    """The maximum of ints and symbolic expressions.

    Candidates that cannot be ordered for every value of the symbols are kept
    side by side and combined with ``jax.core.max_dim`` at the end.
    """

    __slots__ = ("cands",)

    def __init__(self) -> None:
        self.cands: list[Any] = []

    def add(self, v: Any) -> None:
        cands = self.cands
        if type(v) is int and len(cands) == 1 and type(cands[0]) is int:
            if v > cands[0]:
                cands[0] = v
            return
        keep = []
        for c in cands:
            order = _order(c, v)
            if order >= 0:  # c >= v: v adds nothing
                return
            if order == -2:  # incomparable
                keep.append(c)
        keep.append(v)
        self.cands = keep

    def value(self) -> Any:
        return max_value(self.cands) if self.cands else 0


def _order(a: Any, b: Any) -> int:
    """1 if a > b, 0 if a == b, -1 if a < b, -2 if it depends on the symbols."""
    try:
        if a == b:
            return 0
        return 1 if a >= b else (-1 if a <= b else -2)
    except Exception:  # noqa: BLE001 - jax raises InconclusiveDimensionOperation
        return -2


def nbytes(vs: Any) -> Any:
    """Bytes of the (non-literal) variables ``vs``, each counted once."""
    acc = Acc()
    seen: set[int] = set()
    for v in vs:
        if isinstance(v, Literal) or id(v) in seen:
            continue
        seen.add(id(v))
        acc.add(aval_info(v.aval).nbytes)
    return acc.value()


# id(jaxpr) -> (jaxpr, transient peak bytes as _Max candidates)
_TRANSIENT_MEMO: dict[int, tuple[Any, Any]] = {}


def _extra(eqn: Any, out_bytes: Any) -> list[Any]:
    """Bytes an equation needs at its step beyond its inputs and outputs (its nested programs' temporaries).

    Returned as :class:`_Max` candidates (one int for concrete shapes).
    """
    subs = sub_jaxprs(eqn)
    if not subs:
        return [0]
    loop = eqn.primitive.name in ("scan", "while")
    m = _Max()
    m.add(0)
    for j, _ in subs:
        for t in _transient(j):
            # a loop body's buffers come on top of the stacked outputs; a call's outputs are
            # the last of its body's buffers
            m.add(t if loop else t - out_bytes)
    return m.cands


def _liveness(jaxpr: Any, steps: list[Any] | None = None) -> list[Any]:
    """Peak bytes of the buffers a jaxpr creates (its inputs not counted), as :class:`_Max` candidates.

    Program-order liveness: an equation's outputs are allocated at its step
    (its nested program's temporaries with them) while its inputs are still
    live; a value is freed after its last use; the jaxpr's outputs stay live.
    With ``steps``, one ``(eqn, live bytes at the step)`` per equation is appended.
    Candidates stay free of ``max`` terms (symbolic comparisons of those are slow).
    """
    eqns = jaxpr.eqns
    outs = {id(v) for v in jaxpr.outvars if not isinstance(v, Literal)}
    last: dict[int, int] = {}
    for k, eqn in enumerate(eqns):
        for v in eqn.invars:
            if not isinstance(v, Literal):
                last[id(v)] = k
    owned: set[int] = set()  # created here (inputs belong to the caller)
    live: Any = 0
    peak = _Max()
    for k, eqn in enumerate(eqns):
        ob = nbytes(eqn.outvars)
        base = live + ob
        extra = _extra(eqn, ob)
        if len(extra) == 1:
            during = base + extra[0]
            peak.add(during)
            if steps is not None:
                steps.append((eqn, during))
        else:
            for e in extra:
                peak.add(base + e)
            if steps is not None:
                steps.append((eqn, max_value([base + e for e in extra])))
        live = base
        free = []
        for v in eqn.outvars:
            i = id(v)
            owned.add(i)
            if (i not in last and i not in outs) or isinstance(v, DropVar):  # unused: freed at once
                free.append(v)
        for v in eqn.invars:
            i = id(v)
            if i in owned and last.get(i) == k and i not in outs:
                free.append(v)
                owned.discard(i)
        if free:
            live = live - nbytes(free)
    return peak.cands or [0]


#: Above this many candidates that JAX cannot order, a symbolic peak is an upper bound.
_EXACT_MAX = 8


def max_value(cands: list[Any]) -> Any:
    """``max`` of candidates: a balanced tree of ``jax.core.max_dim`` (JAX simplifies deep nests slowly).

    More than :data:`_EXACT_MAX` symbolic candidates (a ``grad`` plan's steps,
    where parameter gradients grow while activations shrink) would take JAX
    minutes to combine; they give :func:`_coefficient_bound` instead.
    """
    if len(cands) > _EXACT_MAX:
        bound = _coefficient_bound(cands)
        if bound is not None:
            return bound
    return _balanced_max(cands)


def _balanced_max(cands: list[Any]) -> Any:
    if len(cands) == 1:
        return cands[0]
    mid = len(cands) // 2
    return jax.core.max_dim(_balanced_max(cands[:mid]), _balanced_max(cands[mid:]))


def _coefficient_bound(cands: list[Any]) -> Any:
    """One polynomial >= every candidate for all dims >= 1: the largest coefficient of each monomial.

    Reads the terms of JAX's symbolic expressions (``_sorted_terms``, not a
    public API); returns None when that fails, and the caller builds the exact max.
    """
    try:
        best: dict[Any, tuple[Any, Any]] = {}  # monomial -> (coefficient, monomial expression)
        const = None
        for c in cands:
            if isinstance(c, (int, np.integer)):
                const = int(c) if const is None else max(const, int(c))
                continue
            seen_const = False
            for term, coeff in c._sorted_terms:  # noqa: SLF001 - no public way to read coefficients
                if term.is_constant:
                    seen_const = True
                    const = coeff if const is None else max(const, coeff)
                    continue
                cur = best.get(term)
                if cur is None:
                    best[term] = (coeff, type(c)._from_term(term, 1, c.scope))  # noqa: SLF001
                elif coeff > cur[0]:
                    best[term] = (coeff, cur[1])
            if not seen_const:
                const = 0 if const is None else max(const, 0)
        out: Any = const or 0
        for coeff, mono in best.values():
            out = out + (mono * max(coeff, 0) if coeff != 1 else mono)
        return out
    except Exception:  # noqa: BLE001 - JAX internals changed: fall back to the exact max
        return None


def _transient(jaxpr: Any) -> list[Any]:
    hit = _TRANSIENT_MEMO.get(id(jaxpr))
    if hit is not None and hit[0] is jaxpr:
        return hit[1]
    t = _liveness(jaxpr)
    if len(_TRANSIENT_MEMO) > 20_000:
        _TRANSIENT_MEMO.clear()
    _TRANSIENT_MEMO[id(jaxpr)] = (jaxpr, t)
    return t


def memory_profile(jaxpr: Any, op_names: set[str]) -> tuple[Any, list[dict[str, Any]]]:
    """``(peak bytes, timeline)`` of a top-level jaxpr: see ``Plan.peak_bytes`` and ``Plan.memory_timeline``."""
    args = nbytes(list(jaxpr.invars) + list(jaxpr.constvars))
    steps: list[Any] = []
    peak = max_value(_liveness(jaxpr, steps))
    timeline = []
    for k, (eqn, live) in enumerate(steps):
        scope, back = eqn_scope(eqn, "", False)
        name = eqn.params.get("name") if eqn.primitive.name in JIT_NAMES else None
        timeline.append({
            "step": k,
            "primitive": name if name in op_names else eqn.primitive.name,
            "scope": scope,
            "phase": phase(back),
            "live_bytes": args + live,
        })
    return args + peak, timeline


def peak_bytes(jaxpr: Any) -> Any:
    """Peak bytes of live buffers of a top-level jaxpr, its arguments included (no timeline)."""
    args = nbytes(list(jaxpr.invars) + list(jaxpr.constvars))
    return args + max_value(_liveness(jaxpr))
