"""The linear primitive that carries a Function's two derivative rules.

``function_lin_p`` is bound by a Function's ``jax.custom_jvp`` rule as the
tangent of its outputs.  It is linear in its last arguments (the input
tangents) and takes the saved context leaves (residuals) first:

- evaluating it (eagerly or lowered under ``jit``) runs the *forward* rule:
  the user's ``jvp`` or the exact linear transpose of the user's ``backward``;
- transposing it (``jax.grad``/``jax.vjp``) runs the user's ``backward``
  directly in the current trace, so Python side effects in ``backward`` happen
  at gradient-trace time, as in PyTorch;
- batching it wraps both rules in ``jax.vmap``, so ``vmap`` of either mode and
  ``grad(vmap(...))`` work;
- its JVP differentiates the forward rule (forward-over-forward and
  reverse-over-forward).

The forward rule is traced lazily: reverse mode never traces it, so a
backward that cannot be transposed (``pure_callback``, NumPy) fails only in
forward mode.

Example (internal use; ``Function.apply`` does this)::

    outs = function_lin_p.bind(*residuals, *tangents, num_res=len(residuals), rule=rule)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax._src import core
from jax._src.interpreters import ad, batching, mlir

__all__ = ["LinRule", "function_lin_p", "lin_aval", "vary_to", "vma_of", "zeros_of"]


# ------------------------------------------------------------ shard_map varying types
# Inside ``jax.shard_map`` an array's type records the manual mesh axes it varies
# over (its "vma", ``typeof(x).mat.varying``, printed ``{V:d}``).  Tangents and
# cotangents must carry exactly the vma of their primals, so every aval and zero
# made here keeps it; outside shard_map the vma is empty and these are plain.


def vma_of(x: Any) -> frozenset:
    """The manual mesh axes ``x`` varies over (empty outside ``shard_map``)."""
    mat = getattr(core.typeof(x), "mat", None)
    return mat.varying if mat is not None else frozenset()


def vary_to(x: Any, vma: frozenset) -> Any:
    """``x`` cast (a no-op ``pvary``) to also vary over the axes in ``vma`` it lacks."""
    missing = vma - vma_of(x)
    return core.pvary(x, tuple(missing)) if missing else x


def lin_aval(x: Any) -> core.ShapedArray:
    """The (non-weak) aval of a primal or tangent, keeping its shard_map vma."""
    aval = core.typeof(x)
    if aval.mat.varying:
        return aval.update(weak_type=False)
    return core.ShapedArray(aval.shape, aval.dtype)


def zeros_of(aval: core.ShapedArray) -> Any:
    """Zeros of ``aval``'s shape and dtype that vary like it (a materialized zero tangent)."""
    z = jnp.zeros(aval.shape, aval.dtype)
    vma = aval.mat.varying
    return core.pvary(z, tuple(vma)) if vma else z


class LinRule:
    """The two rules of one traced Function call, with their output avals.

    ``forward(res, tangents) -> list`` maps residual leaves and the tangents of
    the differentiated inputs to the tangents of the differentiable outputs.
    ``backward(res, cts) -> list`` maps residual leaves and output cotangents
    (``None`` for a symbolic zero) to input cotangents (``None`` for zero).
    Compared and hashed by identity (it lives in a primitive's params).

    >>> rule = LinRule("f", lambda r, t: list(t), lambda r, c: list(c),
    ...                [core.ShapedArray((), jnp.float32)], [core.ShapedArray((), jnp.float32)])
    >>> rule.name
    'f'
    """

    def __init__(
        self,
        name: str,
        forward: Callable[[Sequence[Any], Sequence[Any]], list[Any]],
        backward: Callable[[Sequence[Any], Sequence[Any]], list[Any]],
        out_avals: Sequence[core.AbstractValue],
        lin_avals: Sequence[core.AbstractValue],
    ) -> None:
        self.name = name
        self.forward = forward
        self.backward = backward
        self.out_avals = tuple(out_avals)
        self.lin_avals = tuple(lin_avals)

    def __repr__(self) -> str:
        return f"LinRule({self.name})"


function_lin_p = core.Primitive("custom_vjp_function_lin")
function_lin_p.multiple_results = True


def _impl(*args: Any, num_res: int, rule: LinRule) -> list[Any]:
    return list(rule.forward(list(args[:num_res]), list(args[num_res:])))


function_lin_p.def_impl(_impl)
function_lin_p.def_abstract_eval(lambda *args, num_res, rule: list(rule.out_avals))
mlir.register_lowering(function_lin_p, mlir.lower_fun(_impl, multiple_results=True))


def _transpose(cts: Sequence[Any], *args: Any, num_res: int, rule: LinRule) -> list[Any]:
    res = list(args[:num_res])
    cts = [None if type(ct) is ad.Zero else ct for ct in cts]
    if all(ct is None for ct in cts):
        return [None] * len(args)
    cts_in = rule.backward(res, cts)
    return [None] * num_res + [
        None if ct is None else vary_to(ct, a.mat.varying) for ct, a in zip(cts_in, rule.lin_avals)
    ]


ad.primitive_transposes[function_lin_p] = _transpose


def _jvp(primals: Sequence[Any], tangents: Sequence[Any], *, num_res: int, rule: LinRule):
    res, lin = list(primals[:num_res]), list(primals[num_res:])
    dres, dlin = list(tangents[:num_res]), list(tangents[num_res:])
    out = function_lin_p.bind(*primals, num_res=num_res, rule=rule)
    t_out: list[Any] | None = None
    # Only evaluate the forward rule on tangents that are not all symbolic zeros: under
    # jax.hessian the tangent part is zero and only the residual part (differentiating
    # the rule itself) is needed, which a once-differentiable backward must refuse.
    if any(type(t) is not ad.Zero for t in dlin):
        dlin = [ad.instantiate_zeros(t) for t in dlin]
        t_out = function_lin_p.bind(*res, *dlin, num_res=num_res, rule=rule)
    if any(type(t) is not ad.Zero for t in dres):
        dres = [ad.instantiate_zeros(t) for t in dres]
        _, t_res = jax.jvp(lambda r: tuple(rule.forward(list(r), lin)), (tuple(res),), (tuple(dres),))
        t_out = list(t_res) if t_out is None else [a + b for a, b in zip(t_out, t_res)]
    if t_out is None:
        t_out = [ad.Zero(a.to_tangent_aval()) for a in rule.out_avals]
    return out, t_out


ad.primitive_jvps[function_lin_p] = _jvp


def _batch(args: Sequence[Any], dims: Sequence[Any], *, num_res: int, rule: LinRule):
    size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
    res = list(args[:num_res])
    res_dims = list(dims[:num_res])
    lin = [
        batching.bdim_at_front(x, d, size) for x, d in zip(args[num_res:], dims[num_res:])
    ]

    def fwd(r: Sequence[Any], t: Sequence[Any]) -> list[Any]:
        return list(
            jax.vmap(lambda r_, t_: tuple(rule.forward(list(r_), list(t_))), in_axes=(res_dims, 0))(
                list(r), list(t)
            )
        )

    def bwd(r: Sequence[Any], c: Sequence[Any]) -> list[Any]:
        c_axes = [None if x is None else 0 for x in c]

        def one(r_: list[Any], c_: list[Any]) -> list[Any]:
            outs = rule.backward(r_, c_)
            # vmap needs a batched result; a zero stays a symbolic ``None``.
            return [None if o is None else o for o in outs]

        outs = jax.vmap(one, in_axes=(res_dims, c_axes), out_axes=0)(list(r), list(c))
        return [
            None if o is None else jnp.broadcast_to(o, (size, *a.shape))
            for o, a in zip(outs, rule.lin_avals)
        ]

    new_rule = LinRule(
        rule.name,
        fwd,
        bwd,
        [core.unmapped_aval(size, 0, a) for a in rule.out_avals],
        [core.unmapped_aval(size, 0, a) for a in rule.lin_avals],
    )
    outs = function_lin_p.bind(*res, *lin, num_res=num_res, rule=new_rule)
    return outs, [0] * len(outs)


batching.primitive_batchers[function_lin_p] = _batch
