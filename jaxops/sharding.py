"""Partitioning rules for ops: ``op.register_sharding(rule)`` and the sharding stage.

Without a rule an op inside a sharded ``jax.jit`` is an ordinary piece of the
program and XLA's propagation decides how it is split.  With a rule the op is
wrapped in :func:`jax.experimental.custom_partitioning`, so its kernel runs on
each device's local shard instead of being gathered.

The rule is written in Shardy's einsum-like notation, one factor name per
dimension: ``"b n, n m -> b m"``.  Factors that appear only in the inputs are
contracted; they are replicated before the local call, so the local kernel
computes exact results without any cross-device reduction.  A callable rule
receives the arguments' shapes and returns such a string (for rank-dependent
rules).  With a mutating op the rule describes what the op returns (the new
values of the mutated arguments, see ``jaxops.mutation``).  Under ``jax.vmap``
an op with a vmap rule is batched by that rule (the stage above this one), and
the rule's own call of the op is partitioned again.

>>> import jax, jaxops
>>> @jaxops.custom_op("demo_shard::gelu", mutates_args=())
... def gelu(x: jax.Array) -> jax.Array:
...     return jax.nn.gelu(x)
>>> gelu.register_sharding("... n -> ... n")
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.custom_batching
from jax.sharding import NamedSharding, PartitionSpec

from jaxops.definition import OpDefinition

_FACTOR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\.\.\.")


def parse_rule(op_name: str, rule: str) -> tuple[list[list[str]], list[list[str]]]:
    if "->" not in rule:
        raise ValueError(f"{op_name}: sharding rule {rule!r} must look like 'b n, n m -> b m'")
    lhs, rhs = rule.split("->", 1)

    def side(text: str) -> list[list[str]]:
        parts = [p.strip() for p in text.split(",")] if text.strip() else []
        out = []
        for p in parts:
            tokens = p.split()
            for t in tokens:
                if not _FACTOR.fullmatch(t):
                    raise ValueError(f"{op_name}: bad factor {t!r} in sharding rule {rule!r}")
            out.append(tokens)
        return out

    return side(lhs), side(rhs)


def _expand(factors: list[str], rank: int) -> list[str]:
    """Factor names for each dimension, with ``...`` expanded right-aligned."""
    if "..." not in factors:
        return list(factors)
    k = factors.index("...")
    n_ell = rank - (len(factors) - 1)
    ell = [f"_ell{n_ell - j}" for j in range(n_ell)]
    return factors[:k] + ell + factors[k + 1 :]


def check_rule(op_name: str, rule: Any) -> None:
    """Validate a rule string early (at registration); callables are checked when called."""
    if isinstance(rule, str):
        parse_rule(op_name, rule)


def stage(defn: OpDefinition, inner: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """``inner`` under ``custom_partitioning`` with the op's rule (``inner`` itself without a rule).

    >>> # run = sharding.stage(defn, kernels.stage(defn, run_kernel))
    """
    if defn.sharding_rule is None:
        return inner

    def run(values: list[Any]) -> Any:
        return _run_partitioned(defn, values, inner)

    return run


def _run_partitioned(op: OpDefinition, values: list[Any], inner: Callable[[list[Any]], Any]) -> Any:
    from jax.experimental.custom_partitioning import custom_partitioning

    params = op.binder.params
    idx = [i for i, p in enumerate(params) if p.kind == "tensor" and values[i] is not None]
    if len(idx) != sum(1 for i, p in enumerate(params) if p.is_array and values[i] is not None):
        raise NotImplementedError(f"{op.name}: register_sharding supports ops whose array arguments are single arrays")
    arrays = [values[i] for i in idx]
    rule = op.sharding_rule
    text = rule if isinstance(rule, str) else rule(*[a.shape for a in arrays])
    ins, outs = parse_rule(op.name, text)
    if len(ins) != len(arrays):
        raise ValueError(
            f"{op.name}: sharding rule {text!r} describes {len(ins)} inputs but the op got {len(arrays)} arrays"
        )
    out_factors = {f for o in outs for f in o}
    contracted = sorted({f for i in ins for f in i if f not in out_factors and f != "..."})

    def local(*arrs: Any) -> Any:
        vals = list(values)
        for i, a in zip(idx, arrs):
            vals[i] = a
        return inner(vals)

    fn = custom_partitioning(local)

    def partition(mesh: Any, arg_shapes: Any, result_shape: Any) -> Any:
        # One mesh axis per factor, taken from the operands' shardings; contracted
        # factors (and factors whose axis is already used) are replicated.
        in_names = [_expand(f, len(a.shape)) for f, a in zip(ins, arg_shapes)]
        results = result_shape if isinstance(result_shape, (tuple, list)) else [result_shape]
        out_names = [_expand(f, len(r.shape)) for f, r in zip(outs, results)]
        axis_of: dict[str, Any] = {}
        used: set[Any] = set()
        for names, a in zip(in_names, arg_shapes):
            spec = tuple(getattr(a.sharding, "spec", ())) + (None,) * len(names)
            for name, ax in zip(names, spec):
                if ax is None or name in contracted or name in axis_of or ax in used:
                    continue
                axis_of[name] = ax
                used.add(ax)

        def sharding_for(names: list[str]) -> Any:
            return NamedSharding(mesh, PartitionSpec(*[axis_of.get(n) for n in names]))

        arg_shardings = tuple(sharding_for(n) for n in in_names)
        out_shardings = [sharding_for(n) for n in out_names]
        result_shardings = out_shardings if isinstance(result_shape, (tuple, list)) else out_shardings[0]
        return mesh, local, result_shardings, arg_shardings

    fn.def_partition(
        partition=partition,
        sharding_rule=text,
        need_replication_factors=tuple(contracted),
    )

    # custom_partitioning has no differentiation rule: differentiate the plain local
    # function instead (what runs under AD is then partitioned by XLA's propagation).
    # Nor a batching rule: under vmap the plain local function is batched instead.
    @jax.custom_batching.custom_vmap
    def batchable(*arrs: Any) -> Any:
        return fn(*arrs)

    @batchable.def_vmap
    def _vmap(axis_size: int, in_batched: Any, *arrs: Any) -> Any:
        axes = [0 if b else None for b in in_batched]
        out = jax.vmap(local, in_axes=axes, axis_size=axis_size)(*arrs)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    @jax.custom_jvp
    def partitioned(*arrs: Any) -> Any:
        return batchable(*arrs)

    @partitioned.defjvp
    def _jvp(primals: Any, tangents: Any) -> Any:
        return jax.jvp(local, primals, tangents)

    return partitioned(*arrays)


__all__ = ["check_rule", "parse_rule", "stage"]
