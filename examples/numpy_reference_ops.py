"""PyTorch's NumPy reference custom ops (``torch/testing/_internal/custom_op_db.py``), ported.

Every op is a *host* op (its body is NumPy) under the namespace ``numpy_ref``,
with a fake (shape-only evaluation), an autograd formula and a vmap rule, so it
works eagerly and under ``jit``/``grad``/``vmap``/``eval_shape`` in any
nesting.  The exceptions are the ones the op itself declares impossible:
``numpy_nonzero`` and ``numpy_nms`` have data-dependent output sizes, so they
run eagerly (and give symbolic sizes under ``eval_shape``) but raise under
``jit`` (``RuntimeError`` "data-dependent") and ``vmap`` (their rules raise
``NotImplementedError``).

Differences from the PyTorch originals, all due to JAX conventions:

* index outputs are ``int32`` (JAX's default integer without x64);
* ``numpy_mul``'s backward sums the gradient back to each input's shape (PyTorch's
  autograd engine does that reduction for broadcast inputs);
* ``numpy_nonzero``/``numpy_nms`` do not refuse results of fewer than 2 rows (that
  guard only existed to dodge a PyTorch tracing limitation);
* ``numpy_sin_`` is functionalized (``jaxops.mutation``): it returns the new value.

Each op also has sample inputs (``jaxops.samples``), used by ``jaxops.opcheck`` and tests.

>>> import jax.numpy as jnp
>>> from examples import numpy_reference_ops as ref
>>> cube, dx = ref.numpy_cube(jnp.array([2.0]))
>>> cube.tolist(), dx.tolist()
([8.0], [12.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxops
from jaxops.samples import register_sample_inputs
from jaxops.types import Number

NS = "numpy_ref"


def _sum_to(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Reduce a broadcast gradient ``g`` back to ``shape``.

    >>> _sum_to(jnp.ones((3, 4)), (4,)).tolist()
    [3.0, 3.0, 3.0, 3.0]
    """
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _to_front(x: jax.Array, bdim: int | None, size: int) -> jax.Array:
    """Move the batch axis to 0, broadcasting an unbatched ``x`` to ``size``."""
    if bdim is None:
        return jnp.broadcast_to(x, (size, *x.shape))
    return jnp.moveaxis(x, bdim, 0)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> jax.Array:
    return jnp.asarray(rng.uniform(low, high, shape).astype(np.float32))


# ------------------------------------------------------------------ numpy_cube
@jaxops.custom_op(f"{NS}::numpy_cube", mutates_args=(), host=True)
def numpy_cube(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(x**3, 3*x**2)``: two outputs.

    >>> numpy_cube(jnp.array([1.0]))[1].tolist()
    [3.0]
    """
    return x**3, 3 * x**2


@numpy_cube.register_fake
def _(x: Any) -> Any:
    return jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype)


def _cube_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    (x,) = inputs
    _cube, dx = output
    ctx.save_for_backward(x, dx)


def _cube_backward(ctx: Any, grad_out: jax.Array, grad_dx: jax.Array) -> jax.Array:
    x, dx = ctx.saved_tensors
    return numpy_mul(grad_out, dx) + 6 * numpy_mul(grad_dx, x)


numpy_cube.register_autograd(_cube_backward, setup_context=_cube_setup)


@numpy_cube.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array) -> Any:
    return numpy_cube(x), (in_dims[0], in_dims[0])


@register_sample_inputs(numpy_cube)
def _() -> list[Any]:
    return [((_uniform(_rng(0), (1,), 0.8, 2.0),), {}), ((_uniform(_rng(1), (3, 2), 0.8, 2.0),), {})]


# ------------------------------------------------------------------- numpy_mul
@jaxops.custom_op(f"{NS}::numpy_mul", mutates_args=(), host=True)
def numpy_mul(x: jax.Array, y: jax.Array) -> jax.Array:
    """Elementwise product (broadcasting).

    >>> numpy_mul(jnp.array([2.0]), jnp.array([[3.0], [4.0]])).tolist()
    [[6.0], [8.0]]
    """
    return np.asarray(x * y)


@numpy_mul.register_fake
def _(x: Any, y: Any) -> Any:
    return jax.ShapeDtypeStruct(jnp.broadcast_shapes(x.shape, y.shape), jnp.result_type(x, y))


def _mul_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(*inputs)


def _mul_backward(ctx: Any, grad_out: jax.Array) -> tuple[Any, Any]:
    x, y = ctx.saved_tensors
    grad_x = _sum_to(grad_out * y, x.shape) if ctx.needs_input_grad[0] else None
    grad_y = _sum_to(grad_out * x, y.shape) if ctx.needs_input_grad[1] else None
    return grad_x, grad_y


numpy_mul.register_autograd(_mul_backward, setup_context=_mul_setup)


@numpy_mul.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array, y: jax.Array) -> Any:
    x_bdim, y_bdim = in_dims
    x = jnp.moveaxis(x, x_bdim, -1) if x_bdim is not None else x[..., None]
    y = jnp.moveaxis(y, y_bdim, -1) if y_bdim is not None else y[..., None]
    return jnp.moveaxis(numpy_mul(x, y), -1, 0), 0


@register_sample_inputs(numpy_mul)
def _() -> list[Any]:
    rng = _rng(2)
    return [
        ((_uniform(rng, (4,), 0.9, 2.0), _uniform(rng, (3, 4), 0.9, 2.0)), {}),
        ((_uniform(rng, (2, 3), 0.9, 2.0), _uniform(rng, (2, 3), 0.9, 2.0)), {}),
    ]


# ------------------------------------------------------------ numpy_mul_scalar
@jaxops.custom_op(f"{NS}::numpy_mul_scalar", mutates_args=(), host=True)
def numpy_mul_scalar(x: jax.Array, *, scalar: float) -> jax.Array:
    """``x * scalar`` with a keyword-only scalar.

    >>> numpy_mul_scalar(jnp.array([2.0]), scalar=1.5).tolist()
    [3.0]
    """
    return np.asarray(x * scalar, dtype=x.dtype)


@numpy_mul_scalar.register_fake
def _(x: Any, *, scalar: float) -> Any:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _mul_scalar_setup(ctx: Any, inputs: tuple[Any, ...], keyword_only_inputs: dict[str, Any], output: Any) -> None:
    ctx.scalar = keyword_only_inputs["scalar"]


def _mul_scalar_backward(ctx: Any, grad_out: jax.Array) -> jax.Array:
    return grad_out * ctx.scalar


numpy_mul_scalar.register_autograd(_mul_scalar_backward, setup_context=_mul_scalar_setup)


@numpy_mul_scalar.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array, *, scalar: float) -> Any:
    (x_bdim,) = in_dims
    x = jnp.moveaxis(x, x_bdim, -1) if x_bdim is not None else x[..., None]
    return jnp.moveaxis(numpy_mul_scalar(x, scalar=scalar), -1, 0), 0


@register_sample_inputs(numpy_mul_scalar)
def _() -> list[Any]:
    return [((_uniform(_rng(3), (4,), 0.9, 2.0),), {"scalar": 3.14})]


# ------------------------------------------------------------------ numpy_sort
@jaxops.custom_op(f"{NS}::numpy_sort", mutates_args=(), host=True)
def numpy_sort(x: jax.Array, dim: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(sorted, ind, ind_inv)`` along ``dim``; the index outputs are not differentiable.

    >>> [a.tolist() for a in numpy_sort(jnp.array([3.0, 1.0, 2.0]), 0)]
    [[1.0, 2.0, 3.0], [1, 2, 0], [2, 0, 1]]
    """
    ind = np.argsort(x, axis=dim)
    ind_inv = np.argsort(ind, axis=dim)
    result = np.take_along_axis(x, ind, axis=dim)
    return result, ind.astype(np.int32), ind_inv.astype(np.int32)


@numpy_sort.register_fake
def _(x: Any, dim: int) -> Any:
    return (
        jax.ShapeDtypeStruct(x.shape, x.dtype),
        jax.ShapeDtypeStruct(x.shape, jnp.int32),
        jax.ShapeDtypeStruct(x.shape, jnp.int32),
    )


def _sort_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    _out, ind, ind_inv = output
    ctx.dim = inputs[1]
    ctx.save_for_backward(ind, ind_inv)
    ctx.mark_non_differentiable(ind, ind_inv)


def _sort_backward(ctx: Any, grad_out: jax.Array, grad_ind: Any, grad_ind_inv: Any) -> tuple[Any, None]:
    ind, ind_inv = ctx.saved_tensors
    return numpy_take(grad_out, ind_inv, ind, ctx.dim), None


numpy_sort.register_autograd(_sort_backward, setup_context=_sort_setup)


@numpy_sort.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array, dim: int) -> Any:
    x_bdim, _ = in_dims
    x = jnp.moveaxis(x, x_bdim, 0)
    dim = dim if dim >= 0 else dim + x.ndim - 1
    return numpy_sort(x, dim + 1), (0, 0, 0)


@register_sample_inputs(numpy_sort)
def _() -> list[Any]:
    return [((_uniform(_rng(4), (3, 5), -5.0, 5.0), 1), {}), ((_uniform(_rng(5), (4, 2), -5.0, 5.0), -2), {})]


# ------------------------------------------------------------------ numpy_take
@jaxops.custom_op(f"{NS}::numpy_take", mutates_args=(), host=True)
def numpy_take(x: jax.Array, ind: jax.Array, ind_inv: jax.Array, dim: int) -> jax.Array:
    """``take_along_axis(x, ind, dim)``; ``ind_inv`` is the inverse permutation (for backward).

    >>> numpy_take(jnp.array([3.0, 1.0]), jnp.array([1, 0]), jnp.array([1, 0]), 0).tolist()
    [1.0, 3.0]
    """
    return np.take_along_axis(x, ind, dim)


@numpy_take.register_fake
def _(x: Any, ind: Any, ind_inv: Any, dim: int) -> Any:
    for name, i in (("ind", ind), ("ind_inv", ind_inv)):
        if not jnp.issubdtype(i.dtype, jnp.integer):
            raise TypeError(f"numpy_ref::numpy_take: {name} must be an integer array, got {i.dtype}")
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _take_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    _x, ind, ind_inv, dim = inputs
    ctx.dim = dim
    ctx.save_for_backward(ind, ind_inv)


def _take_backward(ctx: Any, grad_out: jax.Array) -> tuple[Any, None, None, None]:
    ind, ind_inv = ctx.saved_tensors
    return numpy_take(grad_out, ind_inv, ind, ctx.dim), None, None, None


numpy_take.register_autograd(_take_backward, setup_context=_take_setup)


@numpy_take.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array, ind: jax.Array, ind_inv: jax.Array, dim: int) -> Any:
    x_bdim, ind_bdim, ind_inv_bdim, _ = in_dims
    logical_ndim = x.ndim if x_bdim is None else x.ndim - 1
    dim = dim if dim >= 0 else dim + logical_ndim
    x = _to_front(x, x_bdim, info.batch_size)
    ind = _to_front(ind, ind_bdim, info.batch_size)
    ind_inv = _to_front(ind_inv, ind_inv_bdim, info.batch_size)
    return numpy_take(x, ind, ind_inv, dim + 1), 0


@register_sample_inputs(numpy_take)
def _() -> list[Any]:
    x = _uniform(_rng(6), (3, 5), -5.0, 5.0)
    _, ind, ind_inv = numpy_sort(x, 1)
    return [((x, ind, ind_inv, 1), {})]


# --------------------------------------------------------------- numpy_nonzero
@jaxops.custom_op(f"{NS}::numpy_nonzero", mutates_args=(), host=True)
def numpy_nonzero(x: jax.Array) -> jax.Array:
    """Indices of the nonzero elements, one row each (data-dependent size).

    >>> numpy_nonzero(jnp.array([0.0, 2.0, 3.0])).tolist()
    [[1], [2]]
    """
    return np.stack(np.nonzero(x), axis=1).astype(np.int32)


@numpy_nonzero.register_fake
def _(x: Any) -> Any:
    size = x.size if isinstance(x.size, int) else None
    n = jaxops.get_ctx().new_dynamic_size(min=0, max=size)
    return jax.ShapeDtypeStruct((n, x.ndim), jnp.int32)


def _no_grad_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.n_inputs = len(inputs)


def _int_output_backward(ctx: Any, *grads: Any) -> tuple[None, ...]:
    # Integer outputs (indices) carry no gradient back to the inputs.
    return (None,) * ctx.n_inputs


numpy_nonzero.register_autograd(_int_output_backward, setup_context=_no_grad_setup)


@numpy_nonzero.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array) -> Any:
    raise NotImplementedError("numpy_ref::numpy_nonzero: Operator is data-dependent and cannot be vmapped.")


@register_sample_inputs(numpy_nonzero)
def _() -> list[Any]:
    rng = _rng(7)
    x = rng.uniform(0.9, 2.0, (10,)).astype(np.float32) * rng.integers(0, 2, (10,))
    return [((jnp.asarray(x),), {}), ((jnp.asarray(x.reshape(2, 5)),), {})]


# ------------------------------------------------------------------- numpy_nms
@jaxops.custom_op(f"{NS}::numpy_nms", mutates_args=(), host=True)
def numpy_nms(boxes: jax.Array, scores: jax.Array, iou_threshold: Number) -> jax.Array:
    """Non-maximum suppression: indices of the boxes kept (data-dependent size).

    >>> b = jnp.array([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    >>> numpy_nms(b, jnp.array([0.9, 0.8, 0.7]), 0.5).tolist()
    [0, 2]
    """
    n = boxes.shape[0]
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes.shape must be (N, 4), got {boxes.shape}")
    if scores.shape != (n,):
        raise ValueError(f"scores.shape must be (N,), got {scores.shape}")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= iou_threshold)[0] + 1]
    return np.asarray(keep, dtype=np.int32)


@numpy_nms.register_fake
def _(boxes: Any, scores: Any, iou_threshold: Number) -> Any:
    n = boxes.shape[0]
    if tuple(boxes.shape) != (n, 4):
        raise ValueError(f"numpy_ref::numpy_nms: boxes.shape must be (N, 4), got {boxes.shape}")
    if tuple(scores.shape) != (n,):
        raise ValueError(f"numpy_ref::numpy_nms: scores.shape must be (N,), got {scores.shape}")
    k = jaxops.get_ctx().new_dynamic_size(min=0, max=n if isinstance(n, int) else None)
    return jax.ShapeDtypeStruct((k,), jnp.int32)


numpy_nms.register_autograd(_int_output_backward, setup_context=_no_grad_setup)


@numpy_nms.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], boxes: jax.Array, scores: jax.Array, iou_threshold: Number) -> Any:
    raise NotImplementedError("numpy_ref::numpy_nms: Operator is data-dependent and cannot be vmapped.")


@register_sample_inputs(numpy_nms)
def _() -> list[Any]:
    rng = _rng(8)
    n = 64
    xs, ys = rng.uniform(0, 28, n), rng.uniform(0, 28, n)
    dx, dy = rng.uniform(0, 4, n), rng.uniform(0, 4, n)
    boxes = np.stack([xs, ys, xs + dx, ys + dy], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    return [((jnp.asarray(boxes), jnp.asarray(scores), float(rng.uniform(0, 1))), {})]


# ------------------------------------------------------------- numpy_view_copy
@jaxops.custom_op(f"{NS}::numpy_view_copy", mutates_args=(), host=True)
def numpy_view_copy(x: jax.Array, shape: Sequence[int]) -> jax.Array:
    """A reshaped copy of ``x`` (a ``Sequence[int]`` argument).

    >>> numpy_view_copy(jnp.arange(6.0), [2, 3]).shape
    (2, 3)
    """
    return np.copy(x.reshape(shape))


@numpy_view_copy.register_fake
def _(x: Any, shape: Sequence[int]) -> Any:
    return jnp.reshape(x, tuple(shape))


def _view_copy_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.x_shape = tuple(inputs[0].shape)


def _view_copy_backward(ctx: Any, grad_out: jax.Array) -> tuple[jax.Array, None]:
    return numpy_view_copy(grad_out, list(ctx.x_shape)), None


numpy_view_copy.register_autograd(_view_copy_backward, setup_context=_view_copy_setup)


@numpy_view_copy.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array, shape: Sequence[int]) -> Any:
    x_bdim, _ = in_dims
    x = jnp.moveaxis(x, x_bdim, 0)
    return numpy_view_copy(x, [x.shape[0], *shape]), 0


@register_sample_inputs(numpy_view_copy)
def _() -> list[Any]:
    return [((_uniform(_rng(9), (2, 3, 4), 0.9, 2.0), [2, 12]), {}), ((_uniform(_rng(10), (6,), 0.9, 2.0), [3, -1]), {})]


# ------------------------------------------------------------------- numpy_cat
@jaxops.custom_op(f"{NS}::numpy_cat", mutates_args=(), host=True)
def numpy_cat(xs: Sequence[jax.Array], dim: int) -> jax.Array:
    """Concatenate a list of arrays along ``dim`` (a list input).

    >>> numpy_cat([jnp.ones(2), jnp.zeros(1)], 0).tolist()
    [1.0, 1.0, 0.0]
    """
    if len(xs) == 0:
        raise ValueError("xs must not be empty")
    if not all(x.dtype == xs[0].dtype for x in xs):
        raise TypeError("all arrays must have the same dtype")
    return np.concatenate(xs, axis=dim)


@numpy_cat.register_fake
def _(xs: Sequence[Any], dim: int) -> Any:
    if len(xs) == 0:
        raise ValueError("numpy_ref::numpy_cat: xs must not be empty")
    if not all(x.dtype == xs[0].dtype for x in xs):
        raise TypeError("numpy_ref::numpy_cat: all arrays must have the same dtype")
    return jnp.concatenate(list(xs), axis=dim)


def _cat_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    xs, dim = inputs
    ctx.dim_sizes = [int(x.shape[dim]) for x in xs]
    ctx.dim = dim


def _cat_backward(ctx: Any, grad_out: jax.Array) -> tuple[list[jax.Array], None]:
    splits = [int(s) for s in np.cumsum(ctx.dim_sizes)[:-1]]
    return list(numpy_split_copy(grad_out, splits, ctx.dim)), None


numpy_cat.register_autograd(_cat_backward, setup_context=_cat_setup)


@numpy_cat.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], xs: Sequence[jax.Array], dim: int) -> Any:
    xs_bdims, _ = in_dims
    logical_ndim = xs[0].ndim - (xs_bdims[0] is not None)
    dim = dim if dim >= 0 else dim + logical_ndim
    xs = [_to_front(x, d, info.batch_size) for x, d in zip(xs, xs_bdims)]
    return numpy_cat(xs, dim + 1), 0


@register_sample_inputs(numpy_cat)
def _() -> list[Any]:
    rng = _rng(11)
    return [(([_uniform(rng, (n, 3, 4), 0.9, 2.0) for n in (2, 4, 5)], 0), {})]


# ------------------------------------------------------------ numpy_split_copy
@jaxops.custom_op(f"{NS}::numpy_split_copy", mutates_args=(), host=True)
def numpy_split_copy(x: jax.Array, splits: Sequence[int], dim: int) -> list[jax.Array]:
    """Split ``x`` at the indices ``splits`` along ``dim`` (a list output).

    >>> [a.shape for a in numpy_split_copy(jnp.ones((2, 9)), [1, 3, 6], 1)]
    [(2, 1), (2, 2), (2, 3), (2, 3)]
    """
    return [np.copy(a) for a in np.split(x, list(splits), axis=dim)]


@numpy_split_copy.register_fake
def _(x: Any, splits: Sequence[int], dim: int) -> Any:
    return jnp.split(x, list(splits), axis=dim)


def _split_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.dim = inputs[2]


def _split_backward(ctx: Any, grad_out: Sequence[jax.Array]) -> tuple[jax.Array, None, None]:
    return numpy_cat(list(grad_out), ctx.dim), None, None


numpy_split_copy.register_autograd(_split_backward, setup_context=_split_setup)


@numpy_split_copy.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array, splits: Sequence[int], dim: int) -> Any:
    x_bdim, _, _ = in_dims
    x = jnp.moveaxis(x, x_bdim, 0)
    dim = dim if dim >= 0 else dim + x.ndim - 1
    return numpy_split_copy(x, splits, dim + 1), 0


@register_sample_inputs(numpy_split_copy)
def _() -> list[Any]:
    return [((_uniform(_rng(12), (2, 9), 0.9, 2.0), [1, 3, 6], 1), {})]


# --------------------------------------------------- numpy_split_copy_with_int
@jaxops.custom_op(f"{NS}::numpy_split_copy_with_int", mutates_args=(), host=True)
def numpy_split_copy_with_int(x: jax.Array, splits: Sequence[int], dim: int) -> tuple[list[jax.Array], int]:
    """Like ``numpy_split_copy`` and also ``len(splits)`` (a mixed output).

    >>> parts, n = numpy_split_copy_with_int(jnp.ones(4), [1], 0)
    >>> len(parts), n
    (2, 1)
    """
    return [np.copy(a) for a in np.split(x, list(splits), axis=dim)], len(splits)


@numpy_split_copy_with_int.register_fake
def _(x: Any, splits: Sequence[int], dim: int) -> Any:
    return jnp.split(x, list(splits), axis=dim), len(splits)


def _split_int_backward(ctx: Any, grad_out: Sequence[jax.Array], _grad_n: Any) -> tuple[jax.Array, None, None]:
    return numpy_cat(list(grad_out), ctx.dim), None, None


numpy_split_copy_with_int.register_autograd(_split_int_backward, setup_context=_split_setup)


@numpy_split_copy_with_int.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array, splits: Sequence[int], dim: int) -> Any:
    x_bdim, _, _ = in_dims
    x = jnp.moveaxis(x, x_bdim, 0)
    dim = dim if dim >= 0 else dim + x.ndim - 1
    result, n = numpy_split_copy_with_int(x, splits, dim + 1)
    return (result, n), ([0] * len(result), None)


@register_sample_inputs(numpy_split_copy_with_int)
def _() -> list[Any]:
    return [((_uniform(_rng(13), (2, 9), 0.9, 2.0), [1, 3, 6], 1), {})]


# ------------------------------------------------------------------- numpy_sin_
@jaxops.custom_op(f"{NS}::numpy_sin_", mutates_args={"x"}, host=True)
def numpy_sin_(x: jax.Array) -> None:
    """In-place ``sin`` (functionalized: returns the new value of ``x``).

    >>> numpy_sin_(jnp.zeros(2)).tolist()
    [0.0, 0.0]
    """
    np.sin(x, out=x)


@numpy_sin_.register_fake
def _(x: Any) -> None:
    # The declared return is None; the copy-out of x has x's shape (jaxops.mutation).
    return None


def _sin_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(inputs[0])  # the value before the in-place update


def _sin_backward(ctx: Any, grad_out: jax.Array) -> jax.Array:
    (x,) = ctx.saved_tensors
    return grad_out * jnp.cos(x)


numpy_sin_.register_autograd(_sin_backward, setup_context=_sin_setup)


@numpy_sin_.register_vmap
def _(info: Any, in_dims: tuple[Any, ...], x: jax.Array) -> Any:
    return numpy_sin_(x), in_dims[0]  # elementwise: any batch layout works


@register_sample_inputs(numpy_sin_)
def _() -> list[Any]:
    return [((_uniform(_rng(14), (5,), -3.0, 3.0),), {}), ((_uniform(_rng(15), (2, 3), -3.0, 3.0),), {})]


ALL_OPS = [
    numpy_cube,
    numpy_mul,
    numpy_mul_scalar,
    numpy_sort,
    numpy_take,
    numpy_nonzero,
    numpy_nms,
    numpy_view_copy,
    numpy_cat,
    numpy_split_copy,
    numpy_split_copy_with_int,
    numpy_sin_,
]

__all__ = [op.name.split("::")[1] for op in ALL_OPS] + ["ALL_OPS"]
