"""Finite-difference checks of gradients: ``gradcheck`` and ``gradgradcheck``.

>>> import jax.numpy as jnp
>>> import custom_vjp
>>> custom_vjp.gradcheck(lambda x, y: jnp.sin(x) * y, (jnp.ones(3), jnp.arange(3.0)))
True

The checks follow ``torch.autograd.gradcheck``:

* floating inputs are cast to float64 and the Jacobian of every floating output
  with respect to every floating input is estimated by central differences;
  64-bit mode is switched on for the duration of the check (``jax.enable_x64``),
  so callers need not enable it;
* reverse mode (``jax.vjp``, one cotangent basis vector at a time) is always
  compared with it;
* forward mode (``jax.jvp``) is compared too when the function supports it.  A
  function raising ``NotImplementedError`` "Trying to use forward AD ... does
  not support it" (a host-only ``backward``) or JAX's "can't apply forward-mode
  autodiff" ``TypeError`` (a raw ``jax.custom_vjp``) is checked in reverse mode
  only;
* when both modes work, ``<J v, u> == <v, J^T u>`` is checked for random ``v``, ``u``.

Non-floating inputs (integers, Python values, ``None``) are passed through
unchanged and not differentiated; non-floating outputs are ignored.  Input
indices in messages count positions of ``inputs``; output indices count the
leaves of the output pytree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GradcheckError", "gradcheck", "gradgradcheck"]


class GradcheckError(RuntimeError):
    """Raised by ``gradcheck`` / ``gradgradcheck`` when a derivative is wrong.

    >>> issubclass(GradcheckError, RuntimeError)
    True
    """


def _is_float(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.floating)


def _forward_unsupported(err: BaseException) -> bool:
    text = str(err)
    if isinstance(err, NotImplementedError) and "Trying to use forward AD" in text:
        return True
    return isinstance(err, TypeError) and "can't apply forward-mode autodiff" in text


def _fmt(a: np.ndarray) -> str:
    return np.array2string(a, precision=6, max_line_width=100, threshold=200)


class _Problem:
    """A function of its floating inputs only, returning its floating output leaves."""

    def __init__(
        self, fn: Callable[..., Any], inputs: Sequence[Any], *, probe: bool = True
    ) -> None:
        self.fn = fn
        self.inputs = [jnp.asarray(x, jnp.float64) if _is_float(x) else x for x in inputs]
        self.diff_idx = [i for i, x in enumerate(self.inputs) if _is_float(x)]
        if not probe:
            return
        if not self.diff_idx:
            raise ValueError(
                "gradcheck: none of the inputs is a floating-point array; nothing to check"
            )
        leaves = jax.tree.leaves(fn(*self.inputs))
        #: positions of the floating leaves among all output leaves
        self.out_idx = [k for k, leaf in enumerate(leaves) if _is_float(leaf)]
        if not self.out_idx:
            raise ValueError(
                "gradcheck: the function returned no floating-point outputs; nothing to check"
            )
        self.out_shapes = [jnp.shape(leaves[k]) for k in self.out_idx]

    @property
    def primals(self) -> list[jax.Array]:
        return [self.inputs[i] for i in self.diff_idx]

    def call(self, *diff_args: jax.Array) -> list[jax.Array]:
        args = list(self.inputs)
        for i, a in zip(self.diff_idx, diff_args):
            args[i] = a
        leaves = jax.tree.leaves(self.fn(*args))
        return [jnp.asarray(leaf, jnp.float64) for leaf in leaves if _is_float(leaf)]

    def numerical(self, eps: float) -> list[list[np.ndarray]]:
        """J[o][i] of shape (out_size, in_size) by central differences."""
        primals = self.primals
        jac = [
            [np.zeros((int(np.prod(s)), int(np.size(p)))) for p in primals]
            for s in self.out_shapes
        ]
        for i, p in enumerate(primals):
            flat = np.asarray(p, np.float64).reshape(-1)
            for j in range(flat.size):
                cols = []
                for sign in (1.0, -1.0):
                    moved = flat.copy()
                    moved[j] += sign * eps
                    args = list(primals)
                    args[i] = jnp.asarray(moved.reshape(np.shape(p)))
                    cols.append([np.asarray(o).reshape(-1) for o in self.call(*args)])
                for o in range(len(self.out_shapes)):
                    jac[o][i][:, j] = (cols[0][o] - cols[1][o]) / (2 * eps)
        return jac

    def reverse(self) -> list[list[np.ndarray]]:
        primals = self.primals
        _, vjp_fn = jax.vjp(self.call, *primals)
        jac = []
        for o, shape in enumerate(self.out_shapes):
            size = int(np.prod(shape))
            rows = [np.zeros((size, int(np.size(p)))) for p in primals]
            for k in range(size):
                cts = [jnp.zeros(s, jnp.float64) for s in self.out_shapes]
                cts[o] = cts[o].reshape(-1).at[k].set(1.0).reshape(shape)
                grads = vjp_fn(cts)
                for i, g in enumerate(grads):
                    rows[i][k, :] = np.asarray(g, np.float64).reshape(-1)
            jac.append(rows)
        return jac

    def forward(self) -> list[list[np.ndarray]] | None:
        primals = self.primals
        jac = [
            [np.zeros((int(np.prod(s)), int(np.size(p)))) for p in primals]
            for s in self.out_shapes
        ]
        for i, p in enumerate(primals):
            for j in range(int(np.size(p))):
                tangents = [jnp.zeros_like(q) for q in primals]
                tangents[i] = tangents[i].reshape(-1).at[j].set(1.0).reshape(np.shape(p))
                try:
                    _, outs = jax.jvp(self.call, primals, tangents)
                except (NotImplementedError, TypeError) as err:
                    if _forward_unsupported(err):
                        return None
                    raise
                for o, t in enumerate(outs):
                    jac[o][i][:, j] = np.asarray(t, np.float64).reshape(-1)
        return jac

    def dot_product_test(self, seed: int) -> tuple[float, float]:
        rng = np.random.default_rng(seed)
        primals = self.primals
        v = [jnp.asarray(rng.standard_normal(np.shape(p))) for p in primals]
        u = [jnp.asarray(rng.standard_normal(s)) for s in self.out_shapes]
        _, jv = jax.jvp(self.call, primals, v)
        _, vjp_fn = jax.vjp(self.call, *primals)
        jtu = vjp_fn(u)
        lhs = float(sum(np.vdot(np.asarray(a), np.asarray(b)) for a, b in zip(jv, u)))
        rhs = float(sum(np.vdot(np.asarray(a), np.asarray(b)) for a, b in zip(v, jtu)))
        return lhs, rhs


def _compare(
    problem: _Problem,
    numerical: list[list[np.ndarray]],
    analytical: list[list[np.ndarray]],
    *,
    mode: str,
    atol: float,
    rtol: float,
    input_label: Callable[[int], str],
    output_label: Callable[[int], str],
) -> str | None:
    for o in range(len(numerical)):
        for i, in_pos in enumerate(problem.diff_idx):
            n, a = numerical[o][i], analytical[o][i]
            if not np.allclose(a, n, atol=atol, rtol=rtol, equal_nan=False):
                return (
                    f"Jacobian mismatch for {output_label(problem.out_idx[o])} with respect "
                    f"to {input_label(in_pos)} ({mode} mode),\n"
                    f"numerical:{_fmt(n)}\nanalytical:{_fmt(a)}\n"
                    f"max abs difference: {np.max(np.abs(a - n)) if a.size else 0.0:.3e}"
                )
    return None


def _run_checks(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    eps: float,
    atol: float,
    rtol: float,
    check_forward_ad: bool,
    input_label: Callable[[int], str],
    output_label: Callable[[int], str],
) -> str | None:
    problem = _Problem(fn, inputs)
    numerical = problem.numerical(eps)
    failure = _compare(
        problem, numerical, problem.reverse(), mode="reverse", atol=atol, rtol=rtol,
        input_label=input_label, output_label=output_label,
    )
    if failure is not None or not check_forward_ad:
        return failure
    forward = problem.forward()
    if forward is None:
        return None
    failure = _compare(
        problem, numerical, forward, mode="forward", atol=atol, rtol=rtol,
        input_label=input_label, output_label=output_label,
    )
    if failure is not None:
        return failure
    lhs, rhs = problem.dot_product_test(seed=0)
    if not np.isclose(lhs, rhs, atol=atol, rtol=rtol):
        return (
            "Forward and reverse mode disagree: <J v, u> = "
            f"{lhs!r} but <v, J^T u> = {rhs!r}"
        )
    return None


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    if not isinstance(inputs, tuple | list):
        inputs = (inputs,)
    return tuple(inputs)


def _check_eps(eps: Any, where: str) -> None:
    """``eps`` must be a positive finite step: ``eps=0`` would divide by zero (a NaN Jacobian)."""
    if isinstance(eps, bool) or not isinstance(eps, int | float | np.floating) or not 0 < eps < float("inf"):
        raise ValueError(f"{where}: eps must be a positive finite step size, got {eps!r}")


def gradcheck(
    fn: Callable[..., Any],
    inputs: Any,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    check_forward_ad: bool = True,
    raise_exception: bool = True,
) -> bool:
    """Compare ``fn``'s derivatives with central finite differences in float64.

    ``inputs`` is a tuple of positional arguments (a single array is accepted
    too).  Returns ``True``, or raises :class:`GradcheckError` naming the output
    and input (``"Jacobian mismatch for output 0 with respect to input 1"``)
    with the numerical and analytical Jacobians.  With
    ``raise_exception=False`` it returns ``False`` instead of raising.

    >>> import jax, jax.numpy as jnp
    >>> @jax.custom_vjp
    ... def bad_sin(x):
    ...     return jnp.sin(x)
    >>> bad_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.sin(x),))
    >>> gradcheck(bad_sin, (jnp.ones(2),), raise_exception=False)
    False
    """
    _check_eps(eps, "gradcheck")
    inputs = _as_tuple(inputs)
    with jax.enable_x64(True):
        failure = _run_checks(
            fn, inputs, eps=eps, atol=atol, rtol=rtol, check_forward_ad=check_forward_ad,
            input_label=lambda i: f"input {i}", output_label=lambda o: f"output {o}",
        )
    if failure is None:
        return True
    if raise_exception:
        raise GradcheckError(failure)
    return False


def gradgradcheck(
    fn: Callable[..., Any],
    inputs: Any,
    grad_outputs: Any = None,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    check_forward_ad: bool = True,
    raise_exception: bool = True,
    seed: int = 0,
) -> bool:
    """Check second derivatives: ``gradcheck`` of ``(inputs, grad_outputs) -> vjp``.

    The checked function maps ``(*inputs, *grad_outputs)`` to the gradients of
    ``fn`` with respect to its floating inputs, so input indices past
    ``len(inputs)`` name the cotangents and output ``k`` is the gradient with
    respect to the ``k``-th floating input.  ``grad_outputs`` (one array per
    floating output leaf) defaults to seeded random values.

    >>> import jax.numpy as jnp
    >>> gradgradcheck(lambda x: jnp.sin(x) ** 2, (jnp.arange(3.0),))
    True
    """
    _check_eps(eps, "gradgradcheck")
    inputs = _as_tuple(inputs)
    with jax.enable_x64(True):
        problem = _Problem(fn, inputs)
        if grad_outputs is None:
            rng = np.random.default_rng(seed)
            cts = [jnp.asarray(rng.standard_normal(s)) for s in problem.out_shapes]
        else:
            cts = [jnp.asarray(c, jnp.float64) for c in _as_tuple(grad_outputs)]
            if [c.shape for c in cts] != problem.out_shapes:
                raise ValueError(
                    "gradgradcheck: grad_outputs shapes "
                    f"{[c.shape for c in cts]} do not match the output shapes "
                    f"{problem.out_shapes}"
                )
        n_in = len(inputs)
        diff_idx = problem.diff_idx

        def first_order(*args: Any) -> tuple[jax.Array, ...]:
            prim_args, ct_args = args[:n_in], args[n_in:]
            inner = _Problem(fn, prim_args, probe=False)
            _, vjp_fn = jax.vjp(inner.call, *inner.primals)
            return tuple(vjp_fn(list(ct_args)))

        def input_label(i: int) -> str:
            if i < n_in:
                return f"input {i}"
            return f"input {i} (grad_outputs[{i - n_in}])"

        def output_label(o: int) -> str:
            return f"output {o} (the gradient with respect to input {diff_idx[o]})"

        failure = _run_checks(
            first_order, (*problem.inputs, *cts), eps=eps, atol=atol, rtol=rtol,
            check_forward_ad=check_forward_ad,
            input_label=input_label, output_label=output_label,
        )
    if failure is None:
        return True
    if raise_exception:
        raise GradcheckError(failure)
    return False
