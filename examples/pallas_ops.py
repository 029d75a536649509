"""A fused RMSNorm whose GPU kernels are Pallas (Triton lowering), registered as op kernels.

``pallas_ops::rms_norm(x, weight, eps)`` normalizes the last axis of ``x``::

    y = x * rsqrt(mean(x**2, axis=-1) + eps) * weight

* its default kernel is the ``jnp`` reference (every platform, and the GPU for
  shapes and dtypes the Pallas kernels do not take);
* ``register_kernel("gpu")`` adds the Pallas forward: one program per block of
  rows, the whole row in registers, the reduction in float32, one read of ``x``
  and one write of ``y``;
* ``register_autograd`` calls the op ``pallas_ops::rms_norm_backward``, whose
  default kernel is the ``jnp`` backward and whose GPU kernel is the Pallas
  backward: each program walks a band of rows, writes ``dx`` row by row and
  keeps its share of ``dweight`` in float32 registers; XLA sums the bands.
  The loop loads the next row before reducing the current one, so the memory
  never waits on a reduction (without that the backward ran at 59 % of copy
  bandwidth, with it at 85 %).
  That op has a ``register_autograd`` of its own (the derivative of the ``jnp``
  backward), since JAX cannot differentiate a ``pallas_call``.

The Pallas kernels run where ``rms_norm_gpu_supported`` says so (float32,
bfloat16 or float16; a power-of-two last dimension from 16 to 65,536); other
inputs take the reference on the GPU too. ``interpret=True`` in
:func:`rms_norm_pallas` / :func:`rms_norm_backward_pallas` runs the same kernels
on the CPU (slowly), which the CPU test suite uses to check them.

``docs/pallas_kernels.md`` walks through this file; ``bench/pallas_rmsnorm.py``
measures it against XLA's fusion of the reference and the device's copy bandwidth.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

import jaxops
from jaxops.samples import register_sample_inputs

#: Dtypes the Pallas kernels take (accumulation is always float32).
PALLAS_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

#: Tuning: the fastest of bench/pallas_rmsnorm.py's sweep on an H200, 32768 x 8192 bfloat16,
#: 2026-12-04 (bench/RESULTS.md). Elements of a forward block (rows x last dim), elements
#: per backward step, rows per backward program. Read when a kernel is traced, so a tuner
#: may set them before the first call.
FWD_BLOCK_ELEMENTS = 8192
BWD_STEP_ELEMENTS = 8192
BWD_ROWS_PER_PROGRAM = 128
#: Software-pipelining depth of the backward's row loop (1, 2 and 3 timed within 1%: 671 / 676 /
#: 668 µs for the backward of 32768 x 8192, so the simplest is kept).
BWD_NUM_STAGES = 1
#: The backward's band shrinks (down to one row) until there are at least this many programs:
#: about two per SM of an H100/H200 (132 SMs), so that no SM idles on a short input.
BWD_MIN_PROGRAMS = 256
#: How many steps ahead the backward loads its rows (0: none). One ahead took the backward of
#: 32768 x 8192 from 632 µs to 446 µs; two or three ahead hold too many registers (604-1634 µs).
BWD_PREFETCH = 1
#: Warps per program (None: from the block's size, see _num_warps); at most one thread per
#: element and at least 4 warps whatever is asked.
FWD_NUM_WARPS: int | None = 16
BWD_NUM_WARPS: int | None = 16


# ------------------------------------------------------------------ reference (jnp)
def _acc_dtype(dtype: Any) -> Any:
    """Arithmetic dtype: float32 at least (float64 inputs stay float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def rms_norm_reference(x: jax.Array, weight: jax.Array, eps: float = 1e-6) -> jax.Array:
    """RMSNorm over the last axis in plain ``jnp`` (float32 arithmetic at least, result in ``x.dtype``)."""
    acc = _acc_dtype(x.dtype)
    xf = x.astype(acc)
    r = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (xf * r * weight.astype(acc)).astype(x.dtype)


def rms_norm_backward_reference(
    dy: jax.Array, x: jax.Array, weight: jax.Array, eps: float = 1e-6
) -> tuple[jax.Array, jax.Array]:
    """``(dx, dweight)`` of :func:`rms_norm_reference` in plain ``jnp``.

    With ``r = rsqrt(mean(x**2) + eps)``, ``xhat = x * r`` and ``g = dy * weight``:
    ``dx = r * (g - xhat * mean(g * xhat))`` and ``dweight = sum over rows of dy * xhat``.
    """
    acc = _acc_dtype(x.dtype)
    xf, dyf, wf = x.astype(acc), dy.astype(acc), weight.astype(acc)
    r = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    xhat = xf * r
    g = dyf * wf
    dx = r * (g - xhat * jnp.mean(g * xhat, axis=-1, keepdims=True))
    dw = jnp.sum((dyf * xhat).reshape(-1, x.shape[-1]), axis=0)
    return dx.astype(x.dtype), dw.astype(weight.dtype)


# ------------------------------------------------------------------ Pallas kernels
def rms_norm_gpu_supported(x: Any, weight: Any) -> bool:
    """Whether the Pallas kernels take these arguments (else the reference runs)."""
    d = x.shape[-1] if x.ndim else 0
    return (
        x.ndim >= 1
        and weight.shape == (d,)
        and jnp.dtype(x.dtype) in PALLAS_DTYPES
        and jnp.dtype(weight.dtype) in PALLAS_DTYPES
        and 16 <= d <= 65536
        and d & (d - 1) == 0
        and x.size > 0
    )


def _pow2_divisor(n: int, at_most: int) -> int:
    """The largest power of two that divides ``n`` and is at most ``at_most`` (at least 1)."""
    p = 1
    while p * 2 <= at_most and n % (p * 2) == 0:
        p *= 2
    return p


def _num_warps(elements: int, requested: int | None = None) -> int:
    """Warps per program for a block of ``elements`` values.

    Without ``requested``: about 16-64 values per thread. A requested count is capped at
    one thread per value (small blocks), never below 4 warps.

    >>> _num_warps(8192), _num_warps(8192, 16), _num_warps(64, 16)
    (8, 16, 4)
    """
    if requested is None:
        return int(min(16, max(4, elements // 1024)))
    return int(max(4, min(requested, elements // 32)))


def _fwd_kernel(x_ref: Any, w_ref: Any, o_ref: Any, *, eps: float) -> None:
    x = x_ref[...].astype(jnp.float32)  # (rows, d): the whole row is in registers
    r = jax.lax.rsqrt(jnp.mean(x * x, axis=1, keepdims=True) + eps)
    o_ref[...] = (x * r * w_ref[...].astype(jnp.float32)[None, :]).astype(o_ref.dtype)


def rms_norm_pallas(
    x: jax.Array,
    weight: jax.Array,
    eps: float = 1e-6,
    *,
    block_elements: int | None = None,
    num_warps: int | None = None,
    interpret: bool = False,
) -> jax.Array:
    """The Pallas forward: one program per block of rows (``block_elements`` values)."""
    block_elements = block_elements or FWD_BLOCK_ELEMENTS
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    n = x2.shape[0]
    rows = _pow2_divisor(n, max(1, block_elements // d))
    out = pl.pallas_call(
        functools.partial(_fwd_kernel, eps=float(eps)),
        out_shape=jax.ShapeDtypeStruct((n, d), x.dtype),
        grid=(n // rows,),
        in_specs=[pl.BlockSpec((rows, d), lambda i: (i, 0)), pl.BlockSpec((d,), lambda i: (0,))],
        out_specs=pl.BlockSpec((rows, d), lambda i: (i, 0)),
        compiler_params=plt.CompilerParams(num_warps=_num_warps(rows * d, num_warps or FWD_NUM_WARPS), num_stages=1),
        interpret=interpret,
        name="rms_norm_fwd",
    )(x2, weight)
    return out.reshape(x.shape)


def _bwd_kernel(
    dy_ref: Any,
    x_ref: Any,
    w_ref: Any,
    dx_ref: Any,
    dw_ref: Any,
    *,
    eps: float,
    step: int,
    steps: int,
    prefetch: int,
) -> None:
    w = w_ref[...].astype(jnp.float32)[None, :]
    d = w.shape[1]

    def rows(i: Any) -> Any:
        # The prologue and epilogue index with Python ints, the loop with its traced counter.
        return pl.ds(i * step if isinstance(i, int) else pl.multiple_of(i * step, step), step)

    def load(i: Any) -> tuple[jax.Array, jax.Array]:
        return x_ref[rows(i), :], dy_ref[rows(i), :]

    def compute(i: Any, x: jax.Array, dy: jax.Array, acc: jax.Array) -> jax.Array:
        # Both row sums come from x and dy directly, so they are independent: one round of
        # reductions per step instead of two in a row. With r = rsqrt(mean(x**2) + eps) and
        # g = dy * w: dx = r * g - x * r**3 * mean(g * x), which is r * (g - xhat * mean(g * xhat)).
        x, dy = x.astype(jnp.float32), dy.astype(jnp.float32)
        g = dy * w
        ss = jnp.sum(x * x, axis=1, keepdims=True)
        gx = jnp.sum(g * x, axis=1, keepdims=True)
        r = jax.lax.rsqrt(ss * (1.0 / d) + eps)
        dx_ref[rows(i), :] = (r * g - x * (r * r * r * gx * (1.0 / d))).astype(dx_ref.dtype)
        return acc + jnp.sum(dy * x * r, axis=0, keepdims=True)

    acc0 = jnp.zeros((1, d), jnp.float32)
    depth = min(prefetch, steps - 1)
    if depth <= 0:
        acc = jax.lax.fori_loop(0, steps, lambda i, acc: compute(i, *load(i), acc), acc0)
    else:
        # Register buffering: the loads of step i + depth are issued before step i's
        # reductions, so the rows' memory latency hides behind the arithmetic of the rows
        # before them (without it one row's loads, then its reductions, leave the memory idle).
        def body(i: Any, carry: tuple[Any, ...]) -> tuple[Any, ...]:
            acc, (x, dy), pending = carry[0], carry[1], carry[2:]
            ahead = load(i + depth)  # issued first: Triton keeps the program's order of loads and reductions
            return (compute(i, x, dy, acc), *pending, ahead)

        carry = jax.lax.fori_loop(0, steps - depth, body, (acc0, *[load(k) for k in range(depth)]))
        acc = carry[0]
        for j, (x, dy) in enumerate(carry[1:]):
            acc = compute(steps - depth + j, x, dy, acc)
    dw_ref[...] = acc


def rms_norm_backward_pallas(
    dy: jax.Array,
    x: jax.Array,
    weight: jax.Array,
    eps: float = 1e-6,
    *,
    step_elements: int | None = None,
    rows_per_program: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    prefetch: int | None = None,
    min_programs: int | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """The Pallas backward: each program a band of rows, ``dweight`` partials summed by XLA."""
    step_elements = step_elements or BWD_STEP_ELEMENTS
    rows_per_program = rows_per_program or BWD_ROWS_PER_PROGRAM
    num_stages = num_stages or BWD_NUM_STAGES
    prefetch = BWD_PREFETCH if prefetch is None else prefetch
    d = x.shape[-1]
    x2, dy2 = x.reshape(-1, d), dy.reshape(-1, d)
    n = x2.shape[0]
    band = _pow2_divisor(n, max(1, min(rows_per_program, n // (min_programs or BWD_MIN_PROGRAMS))))
    step = _pow2_divisor(band, max(1, step_elements // d))
    programs = n // band
    dx, dw_parts = pl.pallas_call(
        functools.partial(_bwd_kernel, eps=float(eps), step=step, steps=band // step, prefetch=prefetch),
        out_shape=(
            jax.ShapeDtypeStruct((n, d), x.dtype),
            jax.ShapeDtypeStruct((programs, d), jnp.float32),
        ),
        grid=(programs,),
        in_specs=[
            pl.BlockSpec((band, d), lambda i: (i, 0)),
            pl.BlockSpec((band, d), lambda i: (i, 0)),
            pl.BlockSpec((d,), lambda i: (0,)),
        ],
        out_specs=(pl.BlockSpec((band, d), lambda i: (i, 0)), pl.BlockSpec((1, d), lambda i: (i, 0))),
        compiler_params=plt.CompilerParams(num_warps=_num_warps(step * d, num_warps or BWD_NUM_WARPS), num_stages=num_stages),
        interpret=interpret,
        name="rms_norm_bwd",
    )(dy2, x2, weight)
    return dx.reshape(x.shape), jnp.sum(dw_parts, axis=0).astype(weight.dtype)


# ------------------------------------------------------------------ the ops
@jaxops.custom_op("pallas_ops::rms_norm", mutates_args=())
def rms_norm(x: jax.Array, weight: jax.Array, eps: float = 1e-6) -> jax.Array:
    """RMSNorm over the last axis (default kernel: the ``jnp`` reference)."""
    return rms_norm_reference(x, weight, eps)


@rms_norm.register_kernel("gpu")
def _rms_norm_gpu(x: jax.Array, weight: jax.Array, eps: float = 1e-6) -> jax.Array:
    if not rms_norm_gpu_supported(x, weight):
        return rms_norm_reference(x, weight, eps)
    return rms_norm_pallas(x, weight, eps)


@jaxops.custom_op("pallas_ops::rms_norm_backward", mutates_args=())
def rms_norm_backward(
    dy: jax.Array, x: jax.Array, weight: jax.Array, eps: float = 1e-6
) -> tuple[jax.Array, jax.Array]:
    """``(dx, dweight)`` of :func:`rms_norm` (default kernel: the ``jnp`` backward)."""
    return rms_norm_backward_reference(dy, x, weight, eps)


@rms_norm_backward.register_kernel("gpu")
def _rms_norm_backward_gpu(
    dy: jax.Array, x: jax.Array, weight: jax.Array, eps: float = 1e-6
) -> tuple[jax.Array, jax.Array]:
    if not rms_norm_gpu_supported(x, weight) or dy.dtype != x.dtype:
        return rms_norm_backward_reference(dy, x, weight, eps)
    return rms_norm_backward_pallas(dy, x, weight, eps)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)  # y is recomputed from x in the backward: no extra residual
    ctx.eps = eps


def _backward(ctx: Any, dy: jax.Array) -> tuple[jax.Array, jax.Array, None]:
    x, weight = ctx.saved_tensors
    dx, dw = rms_norm_backward(dy, x, weight, ctx.eps)
    return dx, dw, None


rms_norm.register_autograd(_backward, setup_context=_setup_context)


def _setup_context_bwd(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    dy, x, weight, eps = inputs
    ctx.save_for_backward(dy, x, weight)
    ctx.eps = eps


def _backward_of_backward(ctx: Any, ddx: jax.Array, ddw: jax.Array) -> tuple[Any, ...]:
    # Second derivatives (rare) come from the jnp backward on every platform. JAX could
    # not differentiate the body itself: a pallas_call has no derivative, and
    # platform_dependent differentiates every platform's branch.
    dy, x, weight = ctx.saved_tensors
    _, vjp = jax.vjp(lambda a, b, c: rms_norm_backward_reference(a, b, c, ctx.eps), dy, x, weight)
    return (*vjp((ddx, ddw)), None)


rms_norm_backward.register_autograd(_backward_of_backward, setup_context=_setup_context_bwd)


def _key(i: int) -> jax.Array:
    return jax.random.PRNGKey(1000 + i)


@register_sample_inputs(rms_norm)
def _rms_norm_samples() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    x = jax.random.normal(_key(0), (8, 128))
    w = 1.0 + 0.1 * jax.random.normal(_key(1), (128,))
    x3 = jax.random.normal(_key(2), (2, 4, 64))
    return [((x, w), {}), ((x3, w[:64]), {"eps": 1e-5})]


@register_sample_inputs(rms_norm_backward)
def _rms_norm_backward_samples() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    x = jax.random.normal(_key(3), (8, 128))
    dy = jax.random.normal(_key(4), (8, 128))
    w = 1.0 + 0.1 * jax.random.normal(_key(5), (128,))
    return [((dy, x, w), {})]


__all__ = [
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_backward_pallas",
    "rms_norm_backward_reference",
    "rms_norm_gpu_supported",
    "rms_norm_pallas",
    "rms_norm_reference",
]
