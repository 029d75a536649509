"""The NumPy reference ops (examples/numpy_reference_ops.py) against pure-jnp references.

For every op: eager, ``jit``, ``grad``, ``vmap``, ``vmap(grad)``, ``grad(vmap)`` and
``eval_shape`` agree with the jnp reference; the data-dependent ops (nonzero, nms)
run eagerly, give symbolic sizes under ``eval_shape``/``plan`` and raise clearly
under ``jit``/``vmap``/``grad``.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops.samples import sample_inputs

_PATH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "numpy_reference_ops.py"
_NAME = "_jaxops_examples_numpy_reference_ops"  # shared with tests/test_opcheck_generated.py


def _load() -> Any:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


ref = _load()
B = 3  # batch size for the vmap checks


def _u(seed: int, shape: tuple[int, ...], low: float = 0.5, high: float = 2.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32))


def _sort_ref(dim: int) -> Callable[[jax.Array], Any]:
    def f(x: jax.Array) -> Any:
        ind = jnp.argsort(x, axis=dim).astype(jnp.int32)
        return jnp.take_along_axis(x, ind, dim), ind, jnp.argsort(ind, axis=dim).astype(jnp.int32)

    return f


_X35 = _u(0, (3, 5), -5.0, 5.0)
_, _IND, _IND_INV = _sort_ref(1)(_X35)

# name -> (f_op, f_ref, arrays, diff_argnums); f_* take only arrays (statics closed over).
CASES: dict[str, tuple[Callable[..., Any], Callable[..., Any], tuple[Any, ...], tuple[int, ...]]] = {
    "numpy_cube": (ref.numpy_cube, lambda x: (x**3, 3 * x**2), (_u(1, (4,)),), (0,)),
    "numpy_mul": (ref.numpy_mul, lambda x, y: x * y, (_u(2, (4,)), _u(3, (3, 4))), (0, 1)),
    "numpy_mul_scalar": (
        lambda x: ref.numpy_mul_scalar(x, scalar=3.14),
        lambda x: x * 3.14,
        (_u(4, (4,)),),
        (0,),
    ),
    "numpy_sort": (lambda x: ref.numpy_sort(x, 1), _sort_ref(1), (_X35,), (0,)),
    "numpy_take": (
        lambda x, i, ii: ref.numpy_take(x, i, ii, 1),
        lambda x, i, ii: jnp.take_along_axis(x, i, 1),
        (_X35, _IND, _IND_INV),
        (0,),
    ),
    "numpy_view_copy": (
        lambda x: ref.numpy_view_copy(x, [2, 12]),
        lambda x: x.reshape(2, 12),
        (_u(5, (2, 3, 4)),),
        (0,),
    ),
    "numpy_cat": (
        lambda *xs: ref.numpy_cat(list(xs), 0),
        lambda *xs: jnp.concatenate(xs, 0),
        (_u(6, (2, 3)), _u(7, (4, 3)), _u(8, (1, 3))),
        (0, 1, 2),
    ),
    "numpy_split_copy": (
        lambda x: ref.numpy_split_copy(x, [1, 3, 6], 1),
        lambda x: jnp.split(x, [1, 3, 6], axis=1),
        (_u(9, (2, 9)),),
        (0,),
    ),
    "numpy_split_copy_with_int": (
        lambda x: ref.numpy_split_copy_with_int(x, [1, 3, 6], 1)[0],
        lambda x: jnp.split(x, [1, 3, 6], axis=1),
        (_u(10, (2, 9)),),
        (0,),
    ),
    "numpy_sin_": (ref.numpy_sin_, jnp.sin, (_u(11, (5,), -3.0, 3.0),), (0,)),
}


def _loss(fn: Callable[..., Any]) -> Callable[..., jax.Array]:
    """A scalar of every float output (weighted, so no gradient is trivially symmetric)."""

    def loss(*args: Any) -> jax.Array:
        total = jnp.zeros(())
        for leaf in jax.tree_util.tree_leaves(fn(*args)):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                w = jnp.arange(1, leaf.size + 1, dtype=leaf.dtype).reshape(leaf.shape) / leaf.size
                total = total + (jnp.sin(leaf) * w).sum()
        return total

    return loss


def _close(a: Any, b: Any) -> None:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert len(la) == len(lb), (ta, tb)
    for x, y in zip(la, lb):
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, x.dtype, y.shape, y.dtype)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-5)


def _batched(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """B examples per argument: floats perturbed, index arrays repeated."""
    out = []
    for a in args:
        if jnp.issubdtype(a.dtype, jnp.floating):
            out.append(jnp.stack([a * (1.0 + 0.25 * i) for i in range(B)]))
        else:
            out.append(jnp.stack([a] * B))
    return tuple(out)


TRANSFORMS = ["eager", "jit", "grad", "vmap", "vmap_grad", "grad_vmap", "eval_shape"]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("name", list(CASES))
def test_agrees_with_jnp_reference(name: str, transform: str) -> None:
    f_op, f_ref, args, diff = CASES[name]

    def _same(transformed: Callable[[Callable[..., Any]], Callable[..., Any]], a: tuple[Any, ...]) -> None:
        _close(transformed(f_op)(*a), transformed(f_ref)(*a))

    with jaxops.autograd_fallback_mode("error"):  # every op has a formula: no fallback allowed
        if transform == "eager":
            _close(f_op(*args), f_ref(*args))
        elif transform == "jit":
            _close(jax.jit(f_op)(*args), f_ref(*args))
        elif transform == "grad":
            # Transforms run under one jit (a single compile instead of one per host call).
            _same(lambda f: jax.jit(jax.grad(_loss(f), argnums=diff)), args)
        elif transform == "vmap":
            _same(lambda f: jax.jit(jax.vmap(f)), _batched(args))
        elif transform == "vmap_grad":
            _same(lambda f: jax.jit(jax.vmap(jax.grad(_loss(f), argnums=diff))), _batched(args))
        elif transform == "grad_vmap":
            _same(lambda f: jax.jit(jax.grad(_loss(jax.vmap(f)), argnums=diff)), _batched(args))
        else:
            assert jax.eval_shape(f_op, *args) == jax.eval_shape(f_ref, *args)


def test_vmap_in_axes_and_out_axes() -> None:
    x, y = _u(20, (4, 3)), _u(21, (4,))
    got = jax.vmap(ref.numpy_mul, in_axes=(1, None), out_axes=1)(x, y)
    _close(got, jax.vmap(lambda a, b: a * b, in_axes=(1, None), out_axes=1)(x, y))
    # numpy_take with the index arrays unbatched (the rule broadcasts them)
    xs = _batched((_X35,))[0]
    got = jax.vmap(lambda a: ref.numpy_take(a, _IND, _IND_INV, 1))(xs)
    _close(got, jax.vmap(lambda a: jnp.take_along_axis(a, _IND, 1))(xs))


def test_nested_vmap() -> None:
    x = _u(22, (2, 3, 4))
    _close(jax.vmap(jax.vmap(ref.numpy_cube))(x), (x**3, 3 * x**2))
    _close(jax.vmap(jax.vmap(lambda a: ref.numpy_sort(a, -1)))(x), jax.vmap(jax.vmap(_sort_ref(-1)))(x))


def test_split_copy_with_int_second_output() -> None:
    x = _u(23, (2, 9))
    parts, n = ref.numpy_split_copy_with_int(x, [1, 3, 6], 1)
    assert n == 3 and isinstance(n, int) and len(parts) == 4
    parts, n = jax.jit(lambda a: ref.numpy_split_copy_with_int(a, [1, 3], 1))(x)
    assert int(n) == 2 and len(parts) == 3
    parts, n = jax.vmap(lambda a: ref.numpy_split_copy_with_int(a, [2], 0))(x)
    assert [p.shape for p in parts] == [(2, 2), (2, 7)] and n.tolist() == [1, 1]  # out_axes=0 broadcasts


def test_sort_index_outputs_are_not_differentiable() -> None:
    def loss(x: jax.Array) -> jax.Array:
        _, ind, ind_inv = ref.numpy_sort(x, 1)
        return (ind.astype(jnp.float32) * x).sum() + (ind_inv.astype(jnp.float32)).sum()

    # The index outputs carry no gradient: d/dx (ind * x) = ind
    _close(jax.grad(loss)(_X35), _sort_ref(1)(_X35)[1].astype(jnp.float32))


def test_sin_inplace_leaves_input_and_updates_ref() -> None:
    x = _u(24, (5,), -3.0, 3.0)
    before = np.asarray(x).copy()
    _close(ref.numpy_sin_(x), jnp.sin(x))
    np.testing.assert_array_equal(np.asarray(x), before)
    r = jax.new_ref(x)
    assert ref.numpy_sin_(r) is not None
    _close(r[...], jnp.sin(x))


# ------------------------------------------------------------- data-dependent ops
_NZ = jnp.array([[0.0, 1.5, 0.0], [2.0, 0.0, 3.0]])
_BOXES = jnp.array([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [21, 21, 30, 30]])
_SCORES = jnp.array([0.9, 0.8, 0.7, 0.95])


def test_nonzero_eager_matches_jnp() -> None:
    got = ref.numpy_nonzero(_NZ)
    _close(got, jnp.stack(jnp.nonzero(_NZ), axis=1).astype(jnp.int32))
    assert got.shape == (3, 2)


def test_nms_eager() -> None:
    got = ref.numpy_nms(_BOXES, _SCORES, 0.5)
    assert got.tolist() == [3, 0]
    assert ref.numpy_nms(_BOXES, _SCORES, 1.0).tolist() == [3, 0, 1, 2]


def test_nms_sample_is_a_valid_suppression() -> None:
    ((boxes, scores, thr), _kw) = sample_inputs(ref.numpy_nms)[0]
    keep = np.asarray(ref.numpy_nms(boxes, scores, thr))
    b = np.asarray(boxes)
    assert len(set(keep.tolist())) == len(keep) >= 1
    assert np.all(np.diff(np.asarray(scores)[keep]) <= 0)  # kept in score order

    def iou(i: int, j: int) -> float:
        w = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + 1)
        h = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + 1)
        area = lambda k: (b[k, 2] - b[k, 0] + 1) * (b[k, 3] - b[k, 1] + 1)  # noqa: E731
        return w * h / (area(i) + area(j) - w * h)

    for a in range(len(keep)):
        for c in range(a + 1, len(keep)):
            assert iou(keep[a], keep[c]) <= thr


@pytest.mark.parametrize(
    "call",
    [lambda: jax.eval_shape(ref.numpy_nonzero, _NZ), lambda: jax.eval_shape(lambda b, s: ref.numpy_nms(b, s, 0.5), _BOXES, _SCORES)],
    ids=["nonzero", "nms"],
)
def test_data_dependent_eval_shape_is_symbolic(call: Callable[[], Any]) -> None:
    out = call()
    assert out.dtype == jnp.int32
    assert not isinstance(out.shape[0], int)
    assert str(out.shape[0]).startswith("numpy_ref_numpy_")


def test_data_dependent_symbolic_inputs_and_plan() -> None:
    (n,) = jax.export.symbolic_shape("n")
    out = jax.eval_shape(ref.numpy_nonzero, jax.ShapeDtypeStruct((n, 3), jnp.float32))
    assert str(out.shape[0]) == "numpy_ref_numpy_nonzero_0" and out.shape[1] == 2
    p = jaxops.plan(lambda x: ref.numpy_nonzero(x), jax.ShapeDtypeStruct((4, 3), jnp.float32))
    (rec,) = [r for r in p.records if r["op"] == "numpy_ref::numpy_nonzero"]
    assert str(rec["outputs"][0].shape[0]) == "numpy_ref_numpy_nonzero_0"


@pytest.mark.parametrize(
    ("op", "f", "args"),
    [
        (lambda: ref.numpy_nonzero, lambda x: ref.numpy_nonzero(x), (_NZ,)),
        (lambda: ref.numpy_nms, lambda b, s: ref.numpy_nms(b, s, 0.5), (_BOXES, _SCORES)),
    ],
    ids=["nonzero", "nms"],
)
def test_data_dependent_impossible_transforms_raise(
    op: Callable[[], Any], f: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    name = op().name
    with pytest.raises(RuntimeError, match=rf"{name}.*data-dependent.*eagerly"):
        jax.jit(f)(*args)
    with pytest.raises(RuntimeError, match=rf"{name}.*data-dependent"):
        jax.jit(lambda *a: f(*a).sum() + 1)(*args)
    with pytest.raises(NotImplementedError, match="data-dependent and cannot be vmapped"):
        jax.vmap(f)(*(jnp.stack([a, a]) for a in args))
    with pytest.raises(RuntimeError, match="data-dependent"):
        jax.grad(lambda x: f(x, *args[1:]).sum().astype(jnp.float32) * x.sum())(args[0])


def test_every_op_has_samples_fake_autograd_and_vmap() -> None:
    for op in ref.ALL_OPS:
        assert sample_inputs(op), op.name
        assert op.definition.fake is not None and op.definition.autograd is not None and op.definition.vmap_rule is not None, op.name
        for args, kwargs in sample_inputs(op):
            op(*args, **kwargs)  # every sample is a valid eager call
