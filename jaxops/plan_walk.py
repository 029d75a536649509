"""The jaxpr walk of :func:`jaxops.plan`: op-call records, primitive aggregates, scopes, totals.

:func:`walk` visits a traced program's equations; every nested ``jit`` named
after a registered op becomes a record (its body walked once and memoized),
plain primitives outside ops are aggregated per kind (:class:`PrimAgg`) and
per run of one scope and phase (:class:`Group`); :func:`totals` sums a walk.
"""

from __future__ import annotations

from typing import Any

from jaxops.plan_costs import (
    COST_GEN,
    COSTS,
    JIT_NAMES,
    UNKNOWN,
    Acc,
    as_jaxpr,
    aval_info,
    prim_flops,
    sub_jaxprs,
)
from jaxops.plan_fake import is_placeholder


class PrimAgg:
    """Aggregate of one primitive kind outside ops."""

    __slots__ = ("count", "flops", "bytes", "output_bytes")

    def __init__(self) -> None:
        self.count = 0
        self.flops = Acc()
        self.bytes = Acc()
        self.output_bytes = Acc()

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "flops": self.flops.value(),
            "bytes": self.bytes.value(),
            "output_bytes": self.output_bytes.value(),
        }


class Group(PrimAgg):
    """Primitives outside ops that ran in a row under one scope and phase (one table line)."""

    __slots__ = ("scope", "back", "kinds")

    def __init__(self, scope: str, back: bool) -> None:
        super().__init__()
        self.scope = scope
        self.back = back
        self.kinds: dict[str, int] = {}

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d.update(op="(jax)", scope=self.scope, phase=phase(self.back), primitives=dict(self.kinds))
        return d


class Ctx:
    """State of one walk: op table, records, primitive aggregates and groups."""

    __slots__ = ("ops", "records", "prims", "groups", "used", "fake")

    def __init__(self, ops: dict[str, Any]) -> None:
        self.ops = ops
        self.records: list[dict[str, Any]] = []
        self.prims: dict[str, PrimAgg] = {}
        self.groups: list[Group] = []
        self.used: dict[str, Any] = {}
        self.fake = False  # a plan placeholder (fake standing in for a body) was seen


class Body:
    """What one op body (an inner jaxpr) contributes; memoized per jaxpr object."""

    __slots__ = (
        "jaxpr", "gen", "used", "flops", "nested", "ins", "outs", "in_bytes", "out_bytes", "total_bytes", "fake",
    )


# id(inner jaxpr) -> Body (the jaxpr is kept alive by the entry, so ids are not reused)
_BODY_MEMO: dict[int, Body] = {}


def _body(eqn: Any, jaxpr: Any, ctx: Ctx) -> Body:
    """The memoized :class:`Body` of an op call's inner jaxpr."""
    hit = _BODY_MEMO.get(id(jaxpr))
    if (
        hit is not None
        and hit.jaxpr is jaxpr
        and hit.gen == COST_GEN[0]
        and all(ctx.ops.get(n) is o for n, o in hit.used.items())
    ):
        return hit
    sub = Ctx(ctx.ops)
    b = Body()
    b.jaxpr = jaxpr
    b.gen = COST_GEN[0]
    flops = walk(jaxpr, sub, 1, 1, top=False)
    b.flops = flops.value() if not flops.unknown else None
    b.used = sub.used
    b.nested = sub.records
    b.fake = sub.fake
    ins = [aval_info(v.aval) for v in eqn.invars]
    outs = [aval_info(v.aval) for v in eqn.outvars]
    b.ins = [i.sds for i in ins]
    b.outs = [o.sds for o in outs]
    acc = Acc()
    for i in ins:
        acc.add(i.nbytes)
    b.in_bytes = acc.value()
    acc = Acc()
    for o in outs:
        acc.add(o.nbytes)
    b.out_bytes = acc.value()
    b.total_bytes = b.in_bytes + b.out_bytes
    if len(_BODY_MEMO) > 20_000:
        _BODY_MEMO.clear()
    _BODY_MEMO[id(jaxpr)] = b
    return b


def _stack_info(ns: Any) -> tuple[str, bool]:
    """``(scope, backward)`` of an equation's name stack.

    The scope joins the ``jax.named_scope`` entries (Equinox's module scopes
    included) with ``/``; transformation entries (``jvp(...)``, ``vmap(...)``)
    are left out, and a ``transpose(...)`` entry marks the backward pass.
    """
    try:
        return _SCOPE_MEMO[ns]
    except KeyError:
        pass
    except TypeError:
        return _parse_stack(ns)
    info = _SCOPE_MEMO[ns] = _parse_stack(ns)
    if len(_SCOPE_MEMO) > 50_000:
        _SCOPE_MEMO.clear()
    return info


def _parse_stack(ns: Any) -> tuple[str, bool]:
    parts: list[str] = []
    back = False
    for entry in getattr(ns, "stack", ()):
        name = getattr(entry, "name", "")
        if type(entry).__name__ == "Transform":
            back = back or name == "transpose"
        elif name:
            parts.append(str(name))
    return "/".join(parts), back


_SCOPE_MEMO: dict[Any, tuple[str, bool]] = {}


def join_scope(outer: str, inner: str) -> str:
    """``outer/inner`` (either may be empty)."""
    return f"{outer}/{inner}" if outer and inner else (outer or inner)


def eqn_scope(eqn: Any, prefix: str, back: bool) -> tuple[str, bool]:
    """``(scope, backward)`` of an equation nested under ``prefix``/``back``."""
    scope, b = _stack_info(eqn.source_info.name_stack)
    return join_scope(prefix, scope), back or b


def phase(back: bool) -> str:
    """``"backward"`` or ``"forward"``."""
    return "backward" if back else "forward"


def walk(jaxpr: Any, ctx: Ctx, calls: Any, depth: int, *, top: bool, prefix: str = "", back: bool = False) -> Acc:
    """Walk ``jaxpr``: append op records to ``ctx``; return its FLOPs.

    ``top`` is True outside any op: primitives there are aggregated into
    ``ctx.prims`` and into ``ctx.groups`` (runs of one scope and phase).
    ``calls`` is how often this jaxpr runs per call of the planned function
    (None: unknown).  ``prefix``/``back`` are the scope and the backward flag
    of the equation this jaxpr is nested in (name stacks of nested jaxprs are
    relative to it).
    """
    flops = Acc()
    ops = ctx.ops
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        if prim in JIT_NAMES:
            name = eqn.params.get("name")
            op = ops.get(name) if type(name) is str else None
            if op is not None:
                scope, b = eqn_scope(eqn, prefix, back)
                flops.add(_op_record(eqn, op, name, ctx, calls, depth, scope, b))
                continue
        subs = sub_jaxprs(eqn)
        if subs:
            scope, b = eqn_scope(eqn, prefix, back)
            for j, mult in subs:
                c = None if (calls is None or mult is None) else calls * mult
                f = walk(j, ctx, c, depth, top=top, prefix=scope, back=b)
                if mult is None:
                    flops.add(None)
                else:
                    flops.add(f, mult)
            continue
        f = prim_flops(eqn)
        flops.add(f)
        if prim in UNKNOWN:
            ctx.fake |= is_placeholder(eqn)
        if top:
            scope, b = eqn_scope(eqn, prefix, back)
            agg = ctx.prims.get(prim)
            if agg is None:
                agg = ctx.prims[prim] = PrimAgg()
            groups = ctx.groups
            if groups and groups[-1].scope == scope and groups[-1].back == b:
                group = groups[-1]
            else:
                group = Group(scope, b)
                groups.append(group)
            n = 1 if calls is None else calls
            out_b, all_b = Acc(), Acc()
            for v in eqn.outvars:
                out_b.add(aval_info(v.aval).nbytes)
            all_b.add(out_b)
            for v in eqn.invars:
                all_b.add(aval_info(v.aval).nbytes)
            for a in (agg, group):
                a.count += n
                a.flops.add(f, n)
                a.output_bytes.add(out_b, n)
                a.bytes.add(all_b, n)
            group.kinds[prim] = group.kinds.get(prim, 0) + n
    return flops


def _op_record(
    eqn: Any, op: Any, name: str, ctx: Ctx, calls: Any, depth: int, scope: str, back: bool
) -> Any:
    """Append the record of one op call (and of ops nested in it); return its FLOPs."""
    ctx.used[name] = op
    inner = as_jaxpr(eqn.params.get("jaxpr"))
    b = _body(eqn, inner, ctx)
    ctx.used.update(b.used)
    cost = COSTS.get(name) or COSTS.get(op.qualname)
    if cost is not None:
        try:
            flops = cost(list(b.ins), list(b.outs))
        except Exception as e:  # noqa: BLE001 - a broken cost function must name the op
            raise RuntimeError(f"{name}: the cost function registered with register_cost failed: {e}") from e
    else:
        flops = b.flops
    ctx.records.append({
        "op": name,
        "inputs": list(b.ins),
        "outputs": list(b.outs),
        "bytes": b.total_bytes,
        "input_bytes": b.in_bytes,
        "output_bytes": b.out_bytes,
        "flops": flops,
        "calls": calls,
        "depth": depth - 1,
        "host": op.kernels.any_host,
        "fake": b.fake,
        "scope": scope,
        "phase": phase(back),
    })
    for r in b.nested:
        r2 = dict(r)
        r2["depth"] = r["depth"] + depth
        r2["calls"] = None if (calls is None or r["calls"] is None) else calls * r["calls"]
        r2["scope"] = join_scope(scope, r["scope"])
        r2["phase"] = phase(back or r["phase"] == "backward")
        ctx.records.append(r2)
    return flops



def totals(ctx: Ctx, in_avals: list[Any], out_avals: list[Any], params: Any) -> dict[str, Any]:
    """``Plan.totals`` of a walk: depth-0 op records (times their calls) plus primitives outside ops."""
    op_flops, op_bytes, act = Acc(), Acc(), Acc()
    unknown = 0
    n_calls = 0
    for r in ctx.records:
        if r["flops"] is None:
            unknown += 1
        if r["depth"]:
            continue
        n = 1 if r["calls"] is None else r["calls"]
        n_calls += n
        if r["flops"] is not None:
            op_flops.add(r["flops"], n)
        op_bytes.add(r["bytes"], n)
        act.add(r["output_bytes"], n)
    jax_flops, jax_bytes = Acc(), Acc()
    for p in ctx.prims.values():
        jax_flops.add(p.flops)
        jax_bytes.add(p.bytes)
        act.add(p.output_bytes)
    flops, nbytes = Acc(), Acc()
    flops.add(op_flops)
    flops.add(jax_flops)
    nbytes.add(op_bytes)
    nbytes.add(jax_bytes)
    ins, outs = Acc(), Acc()
    for a in in_avals:
        ins.add(aval_info(a).nbytes)
    for a in out_avals:
        outs.add(aval_info(a).nbytes)
    return {
        "flops": flops.value(),
        "bytes": nbytes.value(),
        "op_flops": op_flops.value(),
        "op_bytes": op_bytes.value(),
        "jax_flops": jax_flops.value(),
        "jax_bytes": jax_bytes.value(),
        "op_calls": n_calls,
        "unknown_flops": unknown + jax_flops.unknown,
        "parameters": params,
        "activation_bytes": act.value(),
        "input_bytes": ins.value(),
        "output_bytes": outs.value(),
    }
