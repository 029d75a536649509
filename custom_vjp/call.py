"""The traced call of a Function: its cached ``jax.custom_jvp`` and per-call derivative rules.

:class:`Built` is built once per Function class and static-argument structure.  Its
``jax.custom_jvp`` runs only ``forward`` as the primal (a plain call or ``jit`` never
runs ``setup_context`` or ``backward``).  Its JVP rule runs ``forward`` /
``setup_context`` on a fresh ctx, freezes the ctx into residuals
(:func:`custom_vjp.ctx.freeze`) and emits the linear primitive of
:mod:`custom_vjp._lin` with a :class:`CallRule`: transposing it calls the user's
``backward``, evaluating it the user's ``jvp`` or the linear transpose of
``backward``.  A ``vmap`` staticmethod is installed with
``jax.custom_batching.custom_vmap`` around the primal ``forward``.

>>> VmapInfo(batch_size=4).batch_size
4
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax._src import core
from jax.custom_derivatives import SymbolicZero

from custom_vjp import _state
from custom_vjp._lin import LinRule, function_lin_p, lin_aval, vary_to, vma_of, zeros_of
from custom_vjp.ctx import Frozen, FunctionCtx, Lifetime, ctx_state, freeze, thaw
from custom_vjp.gradients import backward_name, function_name, normalize_grads, normalize_tangents
from custom_vjp.once import guard_tree, is_once_differentiable, unwrap_once
from custom_vjp.trees import (
    DYN,
    ArgSpec,
    OutSpec,
    flatten_out,
    is_array,
    is_float,
    is_none_or_array,
    per_arg,
    rebuild_args,
    signature_of,
    unflatten_out,
)

__all__ = ["DEFAULT_MARK", "Built", "CallRule", "VmapInfo", "overrides", "vary_alike"]


@dataclasses.dataclass(frozen=True)
class VmapInfo:
    """What a ``vmap`` staticmethod learns about the batch (PyTorch's ``info``).

    >>> VmapInfo(batch_size=4).batch_size
    4
    """

    batch_size: int
    randomness: str = "error"


#: Set on ``Function``'s own placeholder methods (``forward``, ``backward``, ``jvp``, ...).
DEFAULT_MARK = "__cvjp_default__"


def overrides(cls: type, name: str) -> bool:
    """Does Function subclass ``cls`` define its own staticmethod ``name``."""
    method = getattr(cls, name, None)
    return method is not None and not getattr(method, DEFAULT_MARK, False)


def vary_alike(leaves: list[Any]) -> list[Any]:
    """Under ``shard_map``: cast every input to vary over all axes any input varies over.

    JAX does this (``pvary``) to mixed operands of its own primitives; doing it before
    the Function means its rules only see inputs of one varying type, and the
    gradient of an input that does not vary (a replicated weight) is reduced over
    the mesh axes by the transpose of that cast, as for plain JAX code.
    """
    vmas = [vma_of(x) for x in leaves]
    union = frozenset().union(*vmas)
    if not union:
        return leaves
    return [x if v == union else vary_to(x, union) for x, v in zip(leaves, vmas)]


class Built:
    """The cached ``jax.custom_jvp`` of one Function class and static-argument structure.

    ``specs`` has one :class:`~custom_vjp.trees.ArgSpec` per positional argument
    (defaults filled in); ``kwargs`` are static keyword arguments of ``forward``.
    """

    def __init__(
        self,
        cls: type,
        specs: tuple[ArgSpec, ...],
        kwargs: dict[str, Any],
        param_names: Sequence[str] = (),
    ) -> None:
        self.cls = cls
        self.param_names = tuple(param_names)
        self.name = function_name(cls)
        self.forward_ad_fix: str | None = getattr(cls, "_custom_vjp_forward_ad_fix", None)
        self.backward_name = backward_name(cls)
        self.specs = specs
        self.kwargs = kwargs
        self.ctx_style = not overrides(cls, "setup_context")
        self.out_specs: dict[Any, OutSpec] = {}
        backward = cls.backward if overrides(cls, "backward") else cls.vjp
        self.backward = backward
        self.raw_backward = unwrap_once(backward)
        self.once = is_once_differentiable(backward)
        self.has_jvp = overrides(cls, "jvp")
        self.has_vmap = overrides(cls, "vmap")
        forward_flat: Callable[..., list[Any]] = self.forward_flat
        if self.has_vmap:
            forward_flat = jax.custom_batching.custom_vmap(self.forward_flat)
            forward_flat.def_vmap(self._vmap_rule)
        self._primal_flat = forward_flat
        fn = jax.custom_jvp(self._primal)
        fn.defjvp(self._jvp_rule, symbolic_zeros=True)
        self.fn = fn

    # -- primal
    def _call_forward(self, ctx: FunctionCtx | None, args: tuple[Any, ...]) -> Any:
        if self.ctx_style:
            ctx = FunctionCtx((False,) * len(args)) if ctx is None else ctx
            return self.cls.forward(ctx, *args, **self.kwargs)
        return self.cls.forward(*args, **self.kwargs)

    def forward_flat(self, *leaves: Any) -> list[Any]:
        """Run ``forward`` on flat array leaves; returns its array outputs (records its spec)."""
        out = self._call_forward(None, rebuild_args(self.specs, leaves))
        dyn, spec = flatten_out(out)
        self.out_specs[signature_of(leaves)] = spec
        return dyn

    def _primal(self, *leaves: Any) -> list[Any]:
        return list(self._primal_flat(*leaves))

    def _vmap_rule(self, axis_size: int, in_batched: Sequence[bool], *leaves: Any):
        if getattr(self.cls, "generate_vmap_rule", False):
            raise RuntimeError(
                f"You tried to vmap over {self.name}, but it has both generate_vmap_rule=True "
                "and an overridden vmap staticmethod. Please set generate_vmap_rule=False or "
                "delete the overridden vmap staticmethod to avoid ambiguity."
            )
        args = rebuild_args(self.specs, leaves)
        in_dims = tuple(per_arg(self.specs, [0 if b else None for b in in_batched]))
        out, out_dims = self.cls.vmap(VmapInfo(axis_size), in_dims, *args, **self.kwargs)
        dyn, spec = flatten_out(out)
        tops = out if spec.is_tuple else (out,)
        dims_tops = out_dims if spec.is_tuple and isinstance(out_dims, (tuple, list)) else None
        flat_dims: list[Any] = []
        for i, top in enumerate(tops):
            d = dims_tops[i] if dims_tops is not None else out_dims
            top_leaves = jax.tree_util.tree_leaves(top, is_leaf=is_none_or_array)
            d_leaves = list(d) if isinstance(d, (list, tuple)) else [d] * len(top_leaves)
            flat_dims.extend(dd for x, dd in zip(top_leaves, d_leaves) if is_array(x))
        outs, batched = [], []
        for x, d in zip(dyn, flat_dims):
            if d is None:
                outs.append(x)
                batched.append(False)
            else:
                outs.append(jnp.moveaxis(x, d, 0))
                batched.append(True)
        return outs, batched

    # -- differentiation
    def _jvp_rule(self, primals: Sequence[Any], tangents: Sequence[Any]):
        specs = self.specs
        perturbed = [
            not isinstance(t, SymbolicZero) and is_float(core.typeof(p).dtype)
            for p, t in zip(primals, tangents)
        ]
        needs, pos = [], 0
        for s in specs:
            needs.append(any(perturbed[pos : pos + s.n]))
            pos += s.n
        ctx = FunctionCtx(tuple(needs))
        lifetime = Lifetime()
        state = ctx_state(ctx)
        state["lifetime"] = lifetime
        args = rebuild_args(specs, primals)
        if self.ctx_style:
            out = self.cls.forward(ctx, *args, **self.kwargs)
            out_dyn, out_spec = flatten_out(out)
            self.out_specs[signature_of(primals)] = out_spec
        else:
            out_dyn = list(self.fn(*primals))
            out_spec = self.out_specs[signature_of(primals)]
            out = unflatten_out(out_spec, out_dyn)
            self.cls.setup_context(ctx, args, out)
        # setup_context sees the unflattened outputs: identify marks by identity.
        out_objs = [x for x in jax.tree_util.tree_leaves(out, is_leaf=is_none_or_array) if is_array(x)]
        nd_ids = {id(x) for x in state["non_diff"]}
        diff = [
            id(o) not in nd_ids and is_float(jnp.result_type(x)) for o, x in zip(out_objs, out_dyn)
        ]
        out_dyn = [x if d else lax.stop_gradient(x) for x, d in zip(out_dyn, diff)]
        res, frozen = freeze(ctx, lifetime)
        lin_idx = [i for i, p in enumerate(perturbed) if p]
        diff_idx = [i for i, d in enumerate(diff) if d]
        t_diff: list[Any] = []
        if lin_idx and diff_idx:
            call = CallRule(self, frozen, out_spec, out_dyn, diff, list(primals), lin_idx)
            out_avals = [lin_aval(out_dyn[i]) for i in diff_idx]
            lin_avals = [lin_aval(primals[i]) for i in lin_idx]
            rule = LinRule(self.name, call.forward, call.backward, out_avals, lin_avals)
            t_diff = function_lin_p.bind(
                *res, *[tangents[i] for i in lin_idx], num_res=len(res), rule=rule
            )
        t_it = iter(t_diff)
        t_out = [
            next(t_it) if d and lin_idx else SymbolicZero(core.typeof(x).to_tangent_aval())
            for x, d in zip(out_dyn, diff)
        ]
        return out_dyn, t_out


def _shape_dtype(a: core.ShapedArray) -> jax.ShapeDtypeStruct:
    if a.mat.varying:
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding, manual_axis_type=a.mat)
    return jax.ShapeDtypeStruct(a.shape, a.dtype)


def _no_forward_ad(name: str, fix: str | None = None) -> NotImplementedError:
    fix = fix or f"Define jvp(ctx, *tangents) on {name}, or write its backward in jax.numpy"
    return NotImplementedError(
        f"Trying to use forward AD with {name} that does not support it because it has not "
        "implemented the jvp staticmethod and its backward cannot be transposed into a "
        "forward-mode rule (a backward that calls jax.pure_callback, custom_vjp.host or NumPy "
        f"is reverse-mode only). {fix}; jax.grad / jax.vjp work as they are."
    )


class CallRule:
    """The forward and backward rules of one traced call (closed over static data only)."""

    def __init__(
        self,
        built: Built,
        frozen: Frozen,
        out_spec: OutSpec,
        out_dyn: Sequence[Any],
        diff: Sequence[bool],
        primals: Sequence[Any],
        lin_idx: Sequence[int],
    ) -> None:
        self.built = built
        self.frozen = frozen
        self.out_spec = out_spec
        # lin_aval keeps shard_map's varying axes: zeros and gradients made from these
        # avals must vary like the primals they stand for.
        self.out_avals = [lin_aval(x) for x in out_dyn]
        self.diff = list(diff)
        self.in_avals = [lin_aval(x) for x in primals]
        self.lin_idx = list(lin_idx)

    # -- reverse mode: the user's backward
    def _grad_outputs(self, cts: Sequence[Any]) -> tuple[Any, ...]:
        materialize = self.frozen.materialize
        it = iter(cts)
        dyn = []
        for a, d in zip(self.out_avals, self.diff):
            ct = next(it) if d else None
            if ct is None and materialize:
                ct = zeros_of(a)
            dyn.append(ct)
        dyn_it = iter(dyn)
        return self.out_spec.groups([next(dyn_it) if s is DYN else None for s in self.out_spec.static])

    def backward(self, res: Sequence[Any], cts: Sequence[Any], *, raw: bool = False) -> list[Any]:
        """Input cotangents (of the differentiated leaves) from output cotangents.

        ``raw`` runs the backward without its ``once_differentiable`` guard and without
        releasing the ctx: that is how the forward rule transposes it.
        """
        ctx = thaw(self.frozen, res)
        grads_out = self._grad_outputs(cts)
        bwd = self.built.raw_backward if raw else self.built.backward
        try:
            grads = bwd(ctx, *grads_out)
        finally:
            if not raw:
                ctx_state(ctx)["released"] = True
                self.frozen.lifetime.released = True
        flat = normalize_grads(
            self.built.backward_name, self.built.specs, grads, self.in_avals, self.built.param_names
        )
        if not raw and _state.anomaly_mode.get():
            from custom_vjp.anomaly import check_backward_outputs

            check_backward_outputs(self.built.name, tuple(per_arg(self.built.specs, flat)))
        return [flat[i] for i in self.lin_idx]

    # -- forward mode: the user's jvp, or the transpose of the backward
    def forward(self, res: Sequence[Any], tangents: Sequence[Any]) -> list[Any]:
        """Output tangents (of the differentiable outputs) from input tangents."""
        if self.built.has_jvp:
            return self._user_jvp(res, tangents)
        diff_avals = [a for a, d in zip(self.out_avals, self.diff) if d]
        if self.built.once:
            # Differentiating this rule w.r.t. the residuals (forward over reverse,
            # jax.hessian) differentiates the backward: not allowed.
            res = guard_tree(list(res))

        def bwd_of_cts(*cts: Any) -> tuple[Any, ...]:
            grads = self.backward(res, list(cts), raw=True)
            return tuple(
                zeros_of(self.in_avals[i]) if g is None else g
                for g, i in zip(grads, self.lin_idx)
            )

        try:
            transposed = jax.linear_transpose(bwd_of_cts, *[_shape_dtype(a) for a in diff_avals])
            out = transposed(tuple(tangents))
        except (RuntimeError, ValueError, AssertionError) as exc:
            if "differentiate twice" in str(exc) or "expected shape" in str(exc):
                raise
            raise _no_forward_ad(self.built.name, self.built.forward_ad_fix) from exc
        except (NotImplementedError, TypeError, jax.errors.JAXTypeError) as exc:
            raise _no_forward_ad(self.built.name, self.built.forward_ad_fix) from exc
        return list(out)

    def _user_jvp(self, res: Sequence[Any], tangents: Sequence[Any]) -> list[Any]:
        ctx = thaw(self.frozen, res, for_jvp=True)
        flat_t: list[Any] = [None] * len(self.in_avals)
        for i, t in zip(self.lin_idx, tangents):
            flat_t[i] = t
        flat_t = [
            zeros_of(a) if t is None and is_float(a.dtype) else t
            for t, a in zip(flat_t, self.in_avals)
        ]
        out_t = self.built.cls.jvp(ctx, *per_arg(self.built.specs, flat_t))
        return normalize_tangents(self.built.name, self.out_spec, out_t, self.out_avals, self.diff)
