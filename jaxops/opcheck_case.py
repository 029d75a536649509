"""The per-call case ``opcheck`` checks: one op with one bound set of sample arguments.

:class:`OpCase` binds the arguments once and knows how to call the op on them (eagerly, as a
function of its floating leaves) and how to name the registrations a check blames.  Also here:
:class:`CheckFailure` (what a check raises), output comparison with per-dtype tolerances, and
the error-text helpers shared by the checks (``describe_exc``, ``is_out_of_memory``).

>>> describe_exc(ValueError("bad\\nmore")), is_out_of_memory(MemoryError())
('ValueError: bad', True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxops.dispatch import Kernel, platform_of_leaves, source_location
from jaxops.kernels import eager_fake_checks

#: Default (rtol, atol) per dtype for the eager-vs-jit and vmap comparisons.
_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}


class CheckFailure(Exception):
    """Raised inside a check; turned into an :class:`OpCheckError` by :func:`opcheck`."""

    def __init__(self, registration: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.registration = registration
        self.problem = problem
        self.fix = fix


def is_float_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating or complex dtype."""
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def is_float_leaf(x: Any) -> bool:
    """Whether ``x`` is an array with a floating or complex dtype."""
    return hasattr(x, "dtype") and hasattr(x, "shape") and is_float_dtype(x.dtype)


def describe_exc(e: BaseException) -> str:
    """``Type: message`` of an exception, one line; a host callback's error gives its last line.

    >>> describe_exc(ValueError("bad\\nmore"))
    'ValueError: bad'
    """
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if "Traceback (most recent call last)" in str(e):
        # A host callback's error (JaxRuntimeError): the real error is the last line.
        return lines[-1]
    return f"{type(e).__name__}: {lines[0]}"


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says the machine (host or device) ran out of memory.

    >>> is_out_of_memory(MemoryError()), is_out_of_memory(ValueError("shape"))
    (True, False)
    """
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


class OpCase:
    """One op and one bound set of arguments, with the ways of calling it opcheck needs."""

    def __init__(self, op: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        self.op = op
        self.name: str = op.name
        self.params = op.definition.binder.params
        self.values: list[Any] = op.definition.binder.bind(tuple(args), dict(kwargs))
        # Inputs become JAX arrays once, so no eager call can mutate the caller's buffers.
        self.values = [
            jax.tree_util.tree_map(jnp.asarray, v) if p.is_array and v is not None else v
            for p, v in zip(self.params, self.values)
        ]
        masked = [v if p.is_array else None for p, v in zip(self.params, self.values)]
        self.leaves, self.treedef = jax.tree_util.tree_flatten(masked)
        self.float_idx = [i for i, x in enumerate(self.leaves) if is_float_leaf(x)]
        self._eager_out: tuple[Any] | None = None
        #: False when opcheck(..., differentiable=False): the sample is not meant to be differentiated.
        self.want_grad: bool = True
        # Names of the array leaves, for messages: "x", "xs[1]".
        self.leaf_names: list[str] = []
        for p, v in zip(self.params, self.values):
            if not p.is_array or v is None:
                continue
            if isinstance(v, (list, tuple)):
                self.leaf_names.extend(f"{p.name}[{k}]" for k in range(len(v)))
            else:
                self.leaf_names.append(p.name)

    # -- calling ----------------------------------------------------------------------
    def rebuild(self, leaves: Sequence[Any]) -> list[Any]:
        arrays = jax.tree_util.tree_unflatten(self.treedef, list(leaves))
        return [a if p.is_array else v for p, a, v in zip(self.params, arrays, self.values)]

    def call_values(self, values: list[Any]) -> Any:
        pos, kw = self.op.definition.binder.split_call(values)
        return self.op(*pos, **kw)

    def call(self, leaves: Sequence[Any]) -> Any:
        return self.call_values(self.rebuild(leaves))

    def eager(self) -> Any:
        try:
            with eager_fake_checks(False):  # test_faketensor compares fake and kernel itself
                return self.call(self.leaves)
        except Exception as e:  # noqa: BLE001 - reported as the kernel's failure
            if is_out_of_memory(e):
                raise
            raise CheckFailure(
                self.kernel_label(),
                f"calling the op eagerly with these arguments raised {describe_exc(e)}",
                "make the kernel run on these arguments (or pass arguments the op accepts)",
            ) from e

    # -- differentiation --------------------------------------------------------------
    def differentiable(self) -> bool:
        """At least one floating array input and one floating output."""
        if not self.float_idx:
            return False
        if self._eager_out is None:
            self._eager_out = (self.eager(),)
        return any(is_float_leaf(o) for o in jax.tree_util.tree_leaves(self._eager_out[0]))

    def float_fn(self) -> Callable[..., list[Any]]:
        """A function of the floating input leaves returning the floating output leaves."""

        def fn(*floats: Any) -> list[Any]:
            leaves = list(self.leaves)
            for i, f in zip(self.float_idx, floats):
                leaves[i] = f
            out = jax.tree_util.tree_leaves(self.call(leaves))
            return [o for o in out if is_float_leaf(o)]

        return fn

    @property
    def float_leaves(self) -> list[Any]:
        """The floating array input leaves."""
        return [self.leaves[i] for i in self.float_idx]

    @property
    def eager_result(self) -> Any:
        """The op's eager result on these arguments (computed once, by :meth:`differentiable`)."""
        if self._eager_out is None:
            self._eager_out = (self.eager(),)
        return self._eager_out[0]

    # -- registrations, for messages ---------------------------------------------------
    def kernel(self) -> Kernel | None:
        return self.op.kernels.for_platform(platform_of_leaves(self.leaves))

    def kernel_label(self) -> str:
        k = self.kernel()
        if k is None:
            return "the kernel (none registered for this platform)"
        return f"the {'host ' if k.host else ''}kernel at {k.where}"

    @property
    def is_host(self) -> bool:
        k = self.kernel()
        return bool(k is not None and k.host)

    def fake_label(self) -> str:
        if self.op.definition.fake is not None:
            return f"register_fake at {self.op.definition.fake.where}"
        if self.op.definition.derived_fake is not None:
            return "the fake derived from the jaxtyping annotations (register_fake to override it)"
        if self.is_host:
            return "register_fake (none registered)"
        return f"the kernel at {self.kernel().where} (JAX traces it for shapes)" if self.kernel() else "the kernel"

    def autograd_label(self) -> str:
        reg = self.op.definition.autograd
        if reg is not None:
            return f"register_autograd at {getattr(reg, 'where', '<unknown>')}"
        if self.is_host:
            return "register_autograd (none registered)"
        return f"{self.kernel_label()} (JAX differentiates its body; no register_autograd)"

    def vmap_label(self) -> str:
        rule = self.op.definition.vmap_rule
        if rule is not None:
            return f"register_vmap at {source_location(rule)}"
        if self.is_host:
            method = self.op.vmap_method or "sequential"
            return f"vmap_method={method!r} of custom_op at {self.op.definition.where} (no register_vmap)"
        return f"{self.kernel_label()} (JAX batches its body; no register_vmap)"

    def has_dynamic_sizes(self) -> bool:
        """Whether the fake asks for data-dependent output sizes."""
        if self.op.active_fake() is None:
            return False
        try:
            _, dynamic = self.op.abstract_eval(self.values)
        except Exception:  # noqa: BLE001 - test_faketensor reports a broken fake
            return False
        return bool(dynamic)


def tolerance(dtype: Any, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The ``(rtol, atol)`` for comparing arrays of ``dtype``: the overrides, else the dtype's default."""
    r, a = _TOLERANCES.get(np.dtype(dtype).name if is_float_dtype(dtype) else "", (0.0, 0.0))
    return (r if rtol is None else rtol), (a if atol is None else atol)


def compare_trees(
    expected: Any,
    actual: Any,
    *,
    rtol: float | None,
    atol: float | None,
    what: str,
) -> tuple[str, AssertionError] | None:
    """Compare two output pytrees; return ``(problem, assertion)`` for the first mismatch."""
    e_leaves, e_tree = jax.tree_util.tree_flatten(expected)
    a_leaves, a_tree = jax.tree_util.tree_flatten(actual)
    if e_tree != a_tree:
        msg = f"{what}: the outputs have different structures: {e_tree} vs {a_tree}"
        return msg, AssertionError(msg)
    for k, (e, a) in enumerate(zip(e_leaves, a_leaves)):
        e_np, a_np = np.asarray(e), np.asarray(a)
        if is_python_scalar(e) or is_python_scalar(a):
            # a SymInt/float/bool return: a Python number eagerly, a 0-d array under jit
            e_np, a_np = e_np.astype(np.result_type(e_np, a_np)), a_np.astype(np.result_type(e_np, a_np))
        if e_np.shape != a_np.shape or e_np.dtype != a_np.dtype:
            msg = f"{what}: output {k} is {e_np.dtype}{list(e_np.shape)} vs {a_np.dtype}{list(a_np.shape)}"
            return msg, AssertionError(msg)
        r, t = tolerance(e_np.dtype, rtol, atol)
        try:
            np.testing.assert_allclose(a_np, e_np, rtol=r, atol=t, equal_nan=True, err_msg=f"output {k}")
        except AssertionError as err:
            diff = np.abs(a_np.astype(np.float64) - e_np.astype(np.float64)) if a_np.size else np.zeros(1)
            worst = float(np.nanmax(diff)) if diff.size else 0.0
            return (
                f"{what}: output {k} differs (max absolute difference {worst:.6g}, rtol={r}, atol={t})",
                err,
            )
    return None


def is_python_scalar(x: Any) -> bool:
    """Whether ``x`` is a plain Python number (an op's SymInt/float/bool return, eagerly)."""
    return isinstance(x, (bool, int, float, complex))
