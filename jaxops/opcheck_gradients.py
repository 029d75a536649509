"""``test_gradcheck`` of ``opcheck``: gradients against finite differences in float64.

Up to :data:`DENSE_GRADCHECK_MAX_ELEMENTS` floating input (and output) elements the dense
Jacobians are compared (``custom_vjp.gradcheck``); above, random directions are (a fixed
number of calls, whatever the Jacobian's size).  The check runs with 64-bit mode switched on
process-wide, so host callbacks on XLA's threads see float64 too.  Tests that want the
directional path on small inputs patch ``jaxops.opcheck_gradients.DENSE_GRADCHECK_MAX_ELEMENTS``
(the module that reads it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxops.opcheck_case import CheckFailure, OpCase, describe_exc, is_float_leaf, is_out_of_memory

#: Up to this many elements in the floating inputs (and in the outputs), ``test_gradcheck``
#: builds the dense Jacobians (``custom_vjp.gradcheck``); above it, it checks random
#: directions, whose cost does not depend on the size of the Jacobian.
DENSE_GRADCHECK_MAX_ELEMENTS = 256

#: Random directions per floating input for the directional gradient check.
_DIRECTIONS = 2



def _global_x64() -> bool:
    """JAX's process-wide 64-bit setting, whatever a ``jax.enable_x64`` block in this thread says."""
    seen: list[bool] = []
    reader = threading.Thread(target=lambda: seen.append(bool(jax.config.jax_enable_x64)))
    reader.start()
    reader.join()
    return seen[0]


@contextlib.contextmanager
def _x64_everywhere() -> Iterator[None]:
    """64-bit mode for every thread while the block runs, then the previous setting.

    ``jax.enable_x64`` is thread-local, but a host kernel's callback runs on one of XLA's
    threads, where JAX would turn the kernel's float64 result into float32 and the callback
    would fail ("Incorrect output dtype"); so gradient checks switch the process-wide flag.
    """
    before = _global_x64()
    jax.config.update("jax_enable_x64", True)
    try:
        with jax.enable_x64(True):
            yield
    finally:
        jax.config.update("jax_enable_x64", before)


def _is_real_float(x: Any) -> bool:
    return hasattr(x, "dtype") and bool(jnp.issubdtype(x.dtype, jnp.floating))


def _directional_gradcheck(
    fn: Callable[..., list[Any]],
    primals: Sequence[Any],
    *,
    eps: float,
    atol: float,
    rtol: float,
    seed: int = 0,
) -> str | None:
    """Check ``fn``'s derivatives along random directions (float64); ``None`` if they agree.

    For each real floating input ``i`` and each of ``_DIRECTIONS`` random directions ``v``
    (standard normal, zero on the other inputs), the directional derivative ``J v`` is
    estimated by central differences (two calls of ``fn``).  Reverse mode is checked
    through ``u . (J v) == (J^T u) . v`` for a random unit cotangent ``u`` per floating
    output (one ``vjp`` each); forward mode, where ``fn`` supports it, by comparing
    ``jvp(v)`` with the estimate element by element.  The cost is a fixed number of
    calls, whatever the size of the Jacobian.

    >>> import jax.numpy as jnp
    >>> with jax.enable_x64(True):
    ...     x = jnp.linspace(0.0, 1.0, 1000)
    ...     ok = _directional_gradcheck(lambda a: [jnp.sin(a)], [x], eps=1e-6, atol=1e-5, rtol=1e-3)
    >>> ok is None
    True
    """
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        x64 = [jnp.asarray(p, jnp.float64) if _is_real_float(p) else jnp.asarray(p) for p in primals]
        f = jax.jit(lambda *a: [jnp.asarray(o, jnp.float64) for o in fn(*a) if _is_real_float(o)])
        outs, vjp_fn = jax.vjp(f, *x64)
        if not outs:
            return None
        forward_ok = True
        for i, p in enumerate(x64):
            if not _is_real_float(p):
                continue
            for _ in range(_DIRECTIONS):
                v = [jnp.asarray(rng.standard_normal(np.shape(q)), q.dtype) if k == i else jnp.zeros_like(q)
                     for k, q in enumerate(x64)]
                plus = f(*[q + eps * d if k == i else q for k, (q, d) in enumerate(zip(x64, v))])
                minus = f(*[q - eps * d if k == i else q for k, (q, d) in enumerate(zip(x64, v))])
                numerical = [(np.asarray(a) - np.asarray(b)) / (2 * eps) for a, b in zip(plus, minus)]
                for o, out in enumerate(outs):
                    u_np = rng.standard_normal(np.shape(out))
                    u_np /= max(float(np.linalg.norm(u_np)), 1e-300)
                    cts = [jnp.asarray(u_np) if k == o else jnp.zeros_like(c) for k, c in enumerate(outs)]
                    grads = vjp_fn(cts)
                    expected = float(np.vdot(u_np, numerical[o]))
                    got = float(np.vdot(np.asarray(grads[i]), np.asarray(v[i])))
                    if not np.isclose(got, expected, atol=atol, rtol=rtol):
                        return (
                            f"directional derivative mismatch for output {o} with respect to input {i} "
                            f"(reverse mode, random direction v and unit cotangent u): u . (J v) is "
                            f"{expected!r} by finite differences but (J^T u) . v from the backward is "
                            f"{got!r} (atol={atol}, rtol={rtol})"
                        )
                if not forward_ok:
                    continue
                try:
                    _, tangents = jax.jvp(f, x64, v)
                except (NotImplementedError, TypeError) as err:
                    text = str(err)
                    if "Trying to use forward AD" in text or "can't apply forward-mode autodiff" in text:
                        forward_ok = False
                        continue
                    raise
                for o, (t, n) in enumerate(zip(tangents, numerical)):
                    t_np = np.asarray(t)
                    if not np.allclose(t_np, n, atol=atol, rtol=rtol):
                        worst = float(np.max(np.abs(t_np - n)))
                        return (
                            f"directional derivative mismatch for output {o} with respect to input {i} "
                            f"(forward mode, random direction v): J v from jax.jvp differs from finite "
                            f"differences by up to {worst:.3e} (atol={atol}, rtol={rtol})"
                        )
    return None


def _run_gradcheck(
    dense: bool, fn: Callable[..., list[Any]], primals: Sequence[Any], *, atol: float, rtol: float
) -> str | None:
    """The dense ``custom_vjp.gradcheck`` (raises ``GradcheckError``) or the directional check."""
    from custom_vjp import gradcheck

    if not dense:
        return _directional_gradcheck(fn, primals, eps=1e-6, atol=atol, rtol=rtol)
    gradcheck(jax.jit(fn), tuple(primals), atol=atol, rtol=rtol)  # one trace, reused by jvp/vjp
    return None


def check_gradcheck(case: OpCase, rtol: float | None, atol: float | None) -> None:
    """``test_gradcheck``: float64 gradients (reverse and forward mode) equal finite differences."""
    if not case.differentiable() or (case.is_host and case.op.definition.autograd is None):
        return
    if case.has_dynamic_sizes():
        return
    from custom_vjp import GradcheckError

    fn = case.float_fn()
    legend = ", ".join(f"input {k} = {case.leaf_names[i]}" for k, i in enumerate(case.float_idx))
    atol_, rtol_ = 1e-5 if atol is None else atol, 1e-3 if rtol is None else rtol
    n_in = sum(int(np.size(x)) for x in case.float_leaves)
    n_out = sum(int(np.size(o)) for o in jax.tree_util.tree_leaves(case.eager_result) if is_float_leaf(o))
    dense = max(n_in, n_out) <= DENSE_GRADCHECK_MAX_ELEMENTS
    try:
        with _x64_everywhere():
            failure = _run_gradcheck(dense, fn, case.float_leaves, atol=atol_, rtol=rtol_)
    except GradcheckError as e:
        raise CheckFailure(
            case.autograd_label(),
            f"gradients disagree with finite differences (float64; {legend}): {e}",
            "fix the backward formula (compare it with the derivative of the kernel); a formula "
            "that is only correct in one mode means backward is not the transpose of the forward",
        ) from e
    except Exception as e:  # noqa: BLE001
        if is_out_of_memory(e):
            raise
        raise CheckFailure(
            case.autograd_label(),
            f"gradcheck (float64) raised {describe_exc(e)}",
            "the op and its backward must run on float64 inputs (the fake should use x.dtype, not "
            "a fixed float32)",
        ) from e
    if failure is not None:
        raise CheckFailure(
            case.autograd_label(),
            f"gradients disagree with finite differences (float64, {n_in} input elements: checked "
            f"along random directions; {legend}): {failure}",
            "fix the backward formula (compare it with the derivative of the kernel); a formula "
            "that is only correct in one mode means backward is not the transpose of the forward",
        )
