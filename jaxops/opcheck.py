"""``opcheck``: test an operator's registrations against each other and say which is wrong.

PyTorch's ``torch.library.opcheck`` for jaxops.  One call runs up to six checks on one
set of sample arguments; a failure raises :class:`OpCheckError` whose message names the
op, the check, the registration at fault (``register_fake at file.py:LINE``,
``register_autograd at ...``, ``register_vmap at ...``, ``the kernel at ...``) and how to
fix it.  ``docs/opcheck.md`` explains every message.

>>> import jax, jax.numpy as jnp, jaxops
>>> @jaxops.custom_op("opcheckdoc::twice", mutates_args=())
... def twice(x: jax.Array) -> jax.Array:
...     return 2 * x
>>> from jaxops.opcheck import opcheck
>>> opcheck(twice, (jnp.arange(3.0),))["test_faketensor"]
'SUCCESS'

The checks (names as in ``test_utils``):

* ``test_schema``: host kernels, called directly on writable NumPy copies of the
  arguments, mutate only the arguments declared in ``mutates_args`` and return no
  output that aliases an input.  Traceable kernels work on immutable JAX arrays, so
  there is nothing to observe.
* ``test_autograd_registration``: a differentiable host op has a ``register_autograd``
  formula, and a registered formula runs (``jax.vjp`` through the op) and returns
  gradients of the inputs' shapes.
* ``test_faketensor``: the shapes and dtypes the fake (``jax.eval_shape``) predicts
  equal the ones the kernel really returns; dimensions that are symbolic in the fake
  (``get_ctx().new_dynamic_size()``) are wildcards.
* ``test_aot_dispatch_dynamic``: the eager result equals the ``jax.jit`` result, and so
  do the gradients (``jax.vjp`` with a fixed random cotangent).
* ``test_vmap``: ``jax.vmap`` of the op (the ``register_vmap`` rule, the op's
  ``vmap_method``, or JAX batching the body) equals a Python loop over the examples,
  with all arguments batched, each one alone batched, and the batch axis last.
* ``test_gradcheck``: in float64, reverse-mode gradients equal central finite
  differences, and so do forward-mode ones where forward mode is supported, with
  ``<J v, u> == <v, J^T u>``.  Up to ``DENSE_GRADCHECK_MAX_ELEMENTS`` input (and output)
  elements the whole Jacobians are compared; above, random directions are
  (``u . (J v)`` by finite differences vs ``(J^T u) . v``, and ``jvp(v)`` vs finite
  differences), so the cost does not grow with the size of the Jacobian.

``differentiable=False`` says the sample is not meant to be differentiated:
``test_autograd_registration`` and ``test_gradcheck`` report ``"SKIPPED"``.  Running out
of memory raises ``MemoryError`` naming the op and the check, not an ``OpCheckError``.

Ops without a floating-point array input and a floating-point output are not
differentiable: the gradient parts of the checks have nothing to do and report
``"SUCCESS"``.  The same holds for ``test_gradcheck`` on a host op with no formula
(``test_autograd_registration`` reports that op), and for the ``jax.jit`` / ``vmap``
comparisons of an op with data-dependent output sizes, which cannot be traced by
design: there ``test_aot_dispatch_dynamic`` checks that ``jax.jit`` raises the
documented ``data-dependent`` error instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxops import registry as _registry
from jaxops.dispatch import Kernel, platform_of_leaves, source_location
from jaxops.kernels import eager_fake_checks

DEFAULT_TEST_UTILS: tuple[str, ...] = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_dynamic",
    "test_vmap",
    "test_gradcheck",
)

#: Default (rtol, atol) per dtype for the eager-vs-jit and vmap comparisons.
_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}

_BATCH = 3


class OpCheckError(Exception):
    """An ``opcheck`` failure: which op, which check, which registration, and the fix.

    Attributes: ``op`` (the op's name, ``"ns::op"``), ``check`` (e.g. ``"test_faketensor"``),
    ``registration`` (e.g. ``"register_fake at model.py:12"``), ``fix`` (what to do).

    >>> err = OpCheckError("mylib::foo", "test_vmap", "register_vmap at a.py:3", "wrong batch", "fix the rule")
    >>> err.check, err.registration
    ('test_vmap', 'register_vmap at a.py:3')
    >>> print(str(err).splitlines()[0])
    opcheck(mylib::foo) failed test_vmap: wrong batch
    """

    def __init__(self, op: str, check: str, registration: str, problem: str, fix: str) -> None:
        self.op = op
        self.check = check
        self.registration = registration
        self.problem = problem
        self.fix = fix
        super().__init__(
            f"opcheck({op}) failed {check}: {problem}\n"
            f"  registration at fault: {registration}\n"
            f"  how to fix: {fix}\n"
            f"  to reproduce: jaxops.generate_repro({check!r}, {op!r}, args, kwargs, save_data=True, "
            "dry_run=False) writes a standalone script that re-runs this check"
        )


# ----------------------------------------------------------------------------- helpers
class _Failure(Exception):
    """Raised inside a check; turned into an :class:`OpCheckError` by :func:`opcheck`."""

    def __init__(self, registration: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.registration = registration
        self.problem = problem
        self.fix = fix


def _is_float_dtype(dtype: Any) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def _is_float_leaf(x: Any) -> bool:
    return hasattr(x, "dtype") and hasattr(x, "shape") and _is_float_dtype(x.dtype)


def _describe_exc(e: BaseException) -> str:
    """``Type: message`` of an exception, one line; a host callback's error gives its last line.

    >>> _describe_exc(ValueError("bad\\nmore"))
    'ValueError: bad'
    """
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if "Traceback (most recent call last)" in str(e):
        # A host callback's error (JaxRuntimeError): the real error is the last line.
        return lines[-1]
    return f"{type(e).__name__}: {lines[0]}"


class _Case:
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
        self.float_idx = [i for i, x in enumerate(self.leaves) if _is_float_leaf(x)]
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
            if _is_out_of_memory(e):
                raise
            raise _Failure(
                self.kernel_label(),
                f"calling the op eagerly with these arguments raised {_describe_exc(e)}",
                "make the kernel run on these arguments (or pass arguments the op accepts)",
            ) from e

    # -- differentiation --------------------------------------------------------------
    def differentiable(self) -> bool:
        """At least one floating array input and one floating output."""
        if not self.float_idx:
            return False
        if self._eager_out is None:
            self._eager_out = (self.eager(),)
        return any(_is_float_leaf(o) for o in jax.tree_util.tree_leaves(self._eager_out[0]))

    def float_fn(self) -> Callable[..., list[Any]]:
        """A function of the floating input leaves returning the floating output leaves."""

        def fn(*floats: Any) -> list[Any]:
            leaves = list(self.leaves)
            for i, f in zip(self.float_idx, floats):
                leaves[i] = f
            out = jax.tree_util.tree_leaves(self.call(leaves))
            return [o for o in out if _is_float_leaf(o)]

        return fn

    @property
    def float_leaves(self) -> list[Any]:
        return [self.leaves[i] for i in self.float_idx]

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


def _tolerance(dtype: Any, rtol: float | None, atol: float | None) -> tuple[float, float]:
    r, a = _TOLERANCES.get(np.dtype(dtype).name if _is_float_dtype(dtype) else "", (0.0, 0.0))
    return (r if rtol is None else rtol), (a if atol is None else atol)


def _compare_trees(
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
        if _is_python_scalar(e) or _is_python_scalar(a):
            # a SymInt/float/bool return: a Python number eagerly, a 0-d array under jit
            e_np, a_np = e_np.astype(np.result_type(e_np, a_np)), a_np.astype(np.result_type(e_np, a_np))
        if e_np.shape != a_np.shape or e_np.dtype != a_np.dtype:
            msg = f"{what}: output {k} is {e_np.dtype}{list(e_np.shape)} vs {a_np.dtype}{list(a_np.shape)}"
            return msg, AssertionError(msg)
        r, t = _tolerance(e_np.dtype, rtol, atol)
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


def _is_python_scalar(x: Any) -> bool:
    return isinstance(x, (bool, int, float, complex))


# ------------------------------------------------------------------------------ checks
def _check_schema(case: _Case, rtol: float | None, atol: float | None) -> None:
    op = case.op
    mutable = op.mutated_args
    for _key, kernel in op.kernels.items():
        if not kernel.host:
            continue
        copies = [
            jax.tree_util.tree_map(lambda a: np.array(a, copy=True), v) if p.is_array and v is not None else v
            for p, v in zip(case.params, case.values)
        ]
        before = [
            jax.tree_util.tree_map(lambda a: np.array(a, copy=True), v) if p.is_array and v is not None else v
            for p, v in zip(case.params, copies)
        ]
        try:
            out = op.call_kernel(kernel.fn, copies)
        except Exception as e:  # noqa: BLE001
            raise _Failure(
                f"the host kernel at {kernel.where}",
                f"calling the host kernel directly on NumPy copies of the arguments raised {_describe_exc(e)}",
                "make the kernel accept writable np.ndarray arguments of these shapes and dtypes",
            ) from e
        for p, now, then in zip(case.params, copies, before):
            if not p.is_array or now is None:
                continue
            if p.name in mutable:
                continue
            for a, b in zip(jax.tree_util.tree_leaves(now), jax.tree_util.tree_leaves(then)):
                if not np.array_equal(a, b, equal_nan=True):
                    raise _Failure(
                        f"the host kernel at {kernel.where} (or mutates_args of custom_op at {op.definition.where})",
                        f"Argument {p.name} is not defined as mutable but was mutated by the kernel",
                        f"either declare it, mutates_args={{{p.name!r}}} (the op then returns its new "
                        f"value), or stop writing to it (work on a copy: {p.name} = {p.name}.copy())",
                    )
        inputs = [(p.name, a) for p, v in zip(case.params, copies) if p.is_array and v is not None
                  for a in jax.tree_util.tree_leaves(v)]
        for k, o in enumerate(jax.tree_util.tree_leaves(out)):
            if not isinstance(o, np.ndarray):
                continue
            for pname, a in inputs:
                if np.shares_memory(o, a):
                    raise _Failure(
                        f"the host kernel at {kernel.where}",
                        f"Argument {pname} is not defined to alias output {k}, but output {k} of the "
                        f"kernel shares memory with {pname}",
                        f"return a fresh array (e.g. {pname}.copy(), or np.array(...)); outputs of an "
                        "op may not alias its inputs",
                    )
        try:
            op.check_outputs(out)
        except RuntimeError as e:
            raise _Failure(
                f"the host kernel at {kernel.where}",
                f"the kernel's return value does not match the schema {op.schema}: {e}",
                "return what the schema's return type says (or fix the return annotation)",
            ) from e


def _check_autograd_registration(case: _Case, rtol: float | None, atol: float | None) -> None:
    if not case.differentiable():
        return
    op = case.op
    if op.definition.autograd is None:
        if case.is_host:
            raise _Failure(
                "register_autograd (none registered)",
                "the op is a host op with floating-point inputs and outputs but no autograd formula; "
                "JAX cannot differentiate a host kernel, so jax.grad through it gives a zero "
                "gradient (with a warning) or an error",
                f"register a backward: {op.name.split('::')[-1]}.register_autograd(backward, "
                "setup_context=setup_context), or, if the op is not meant to be differentiated, "
                "opt out with opcheck(..., differentiable=False) (this check and test_gradcheck "
                "then report SKIPPED)",
            )
        return
    fn = case.float_fn()
    primals = case.float_leaves
    label = case.autograd_label()
    try:
        outs, vjp_fn = jax.vjp(fn, *primals)
        cts = [jnp.ones_like(o) for o in outs]
        grads = vjp_fn(cts)
    except Exception as e:  # noqa: BLE001
        if _is_out_of_memory(e):
            raise
        raise _Failure(
            label,
            f"differentiating the op (jax.vjp) raised {_describe_exc(e)}",
            "make backward(ctx, *grads) (and setup_context) run: save what backward needs with "
            "ctx.save_for_backward(...) in setup_context and return one gradient per positional input",
        ) from e
    for i, g, p in zip(case.float_idx, grads, primals):
        if np.shape(g) != np.shape(p):
            raise _Failure(
                label,
                f"the gradient for {case.leaf_names[i]} has shape {np.shape(g)}, expected {np.shape(p)}",
                "return gradients of the same shapes as the inputs from backward",
            )
        if not np.all(np.isfinite(np.asarray(g))) and np.all(np.isfinite(np.asarray(p))):
            raise _Failure(
                label,
                f"the gradient for {case.leaf_names[i]} has non-finite values {np.asarray(g)}",
                "check the backward formula for divisions by zero or logs of non-positive values",
            )


def _check_faketensor(case: _Case, rtol: float | None, atol: float | None) -> None:
    op = case.op
    real = case.eager()
    label = case.fake_label()
    if case.is_host and op.active_fake() is None:
        raise _Failure(
            label,
            "the op is a host op with no fake, so it cannot be traced (jit, grad, vmap, eval_shape)",
            f"register one: @{op.name.split('::')[-1]}.register_fake returning "
            "jax.ShapeDtypeStruct(s) of the outputs",
        )
    fakes: list[tuple[str, Any]] = []
    try:
        fakes.append(("jax.eval_shape", jax.eval_shape(case.call, case.leaves)))
        if op.definition.fake is not None and not case.is_host and not op.mutated_args:
            # A traceable op's own fake is not used for tracing, but plan() and profiles use it.
            fakes.append(("the fake", op.abstract_eval(case.values)[0]))
    except Exception as e:  # noqa: BLE001
        raise _Failure(
            label,
            f"evaluating the fake (shape-only) raised {_describe_exc(e)}",
            "make the fake run on abstract arguments (use x.shape / x.dtype and jnp functions only, "
            "no NumPy on values)",
        ) from e
    real_leaves, real_tree = jax.tree_util.tree_flatten(real)
    for how, fake in fakes:
        fake_leaves, fake_tree = jax.tree_util.tree_flatten(fake)
        if len(fake_leaves) != len(real_leaves):
            raise _Failure(
                label,
                f"the fake ({how}) describes {len(fake_leaves)} output(s) but the kernel returned "
                f"{len(real_leaves)}",
                "return one jax.ShapeDtypeStruct per output of the kernel, in the same structure",
            )
        for k, (f, r) in enumerate(zip(fake_leaves, real_leaves)):
            fshape, rshape = tuple(f.shape), tuple(np.shape(r))
            ok = len(fshape) == len(rshape) and all(
                not isinstance(fd, (int, np.integer)) or int(fd) == rd for fd, rd in zip(fshape, rshape)
            )
            if not ok:
                raise _Failure(
                    label,
                    f"output {k}: Shapes {fshape} (fake) and {rshape} (real, from the kernel) are not equal",
                    "make the fake compute the output shape from the input shapes exactly as the "
                    "kernel does (use get_ctx().new_dynamic_size() for data-dependent sizes)",
                )
            if _is_python_scalar(r):
                continue  # a SymInt/float/bool return: no dtype to compare
            if np.dtype(f.dtype) != np.dtype(r.dtype):
                raise _Failure(
                    label,
                    f"output {k}: Dtypes {np.dtype(f.dtype)} (fake) and {np.dtype(r.dtype)} (real, from "
                    "the kernel) are not equal",
                    "make the fake return the dtype the kernel returns (e.g. x.dtype, or the promoted "
                    "dtype jnp.result_type(x, y)); or make the kernel cast its result",
                )


def _vjp_cotangents(outs: list[Any], seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(np.shape(o)), o.dtype) for o in outs]


def _check_aot_dispatch_dynamic(case: _Case, rtol: float | None, atol: float | None) -> None:
    op = case.op
    eager = case.eager()
    if case.has_dynamic_sizes():
        try:
            jax.jit(case.call)(case.leaves)
        except Exception as e:  # noqa: BLE001
            if "data-dependent" in str(e):
                return
            raise _Failure(
                case.fake_label(),
                f"an op with data-dependent output sizes raised {_describe_exc(e)} under jax.jit "
                "instead of the documented data-dependent error",
                "keep get_ctx().new_dynamic_size() only for sizes that really depend on values",
            ) from e
        return
    try:
        jitted = jax.jit(case.call)(case.leaves)
    except Exception as e:  # noqa: BLE001
        raise _Failure(
            case.fake_label() if case.is_host else case.kernel_label(),
            f"eager vs jax.jit: the op runs eagerly but raised {_describe_exc(e)} under jax.jit",
            "host ops run through a callback whose shapes come from the fake: check the fake; "
            "traceable kernels must not branch on array values in Python",
        ) from e
    mismatch = _compare_trees(eager, jitted, rtol=rtol, atol=atol, what="eager vs jax.jit")
    if mismatch is not None:
        problem, err = mismatch
        raise _Failure(
            case.kernel_label() if not case.is_host else f"{case.kernel_label()} or {case.fake_label()}",
            problem + f"\n{str(err).strip()}",
            "the kernel must compute the same values when called eagerly and under jax.jit: no "
            "hidden state or randomness, and a host op's fake must give the kernel's dtype (the "
            "callback casts to it); pass atol=/rtol= if the difference is acceptable rounding",
        ) from err
    if not case.want_grad or not case.differentiable() or (case.is_host and op.definition.autograd is None):
        return
    fn = case.float_fn()

    def grads(*primals: Any) -> Any:
        outs, vjp_fn = jax.vjp(fn, *primals)
        return vjp_fn(_vjp_cotangents(outs))

    label = case.autograd_label()
    try:
        g_eager = grads(*case.float_leaves)
        g_jit = jax.jit(grads)(*case.float_leaves)
    except Exception as e:  # noqa: BLE001
        raise _Failure(
            label,
            f"eager vs jax.jit: computing gradients raised {_describe_exc(e)}",
            "make the backward formula traceable (JAX operations on ctx.saved_tensors and the "
            "incoming gradients)",
        ) from e
    mismatch = _compare_trees(list(g_eager), list(g_jit), rtol=rtol, atol=atol, what="eager vs jax.jit gradients")
    if mismatch is not None:
        problem, err = mismatch
        raise _Failure(
            label,
            problem + f"\n{str(err).strip()}",
            "the backward must compute the same gradients eagerly and under jax.jit (no hidden "
            "state, no Python branching on values)",
        ) from err


def _batch_leaf(x: Any, axis: int) -> Any:
    """``_BATCH`` distinct examples of ``x`` stacked along ``axis``."""
    if _is_float_leaf(x):
        examples = [x * jnp.asarray(1.0 - 0.1 * b, x.dtype) for b in range(_BATCH)]
    else:
        examples = [x] * _BATCH
    return jnp.stack(examples, axis=axis)


def _vmap_configs(case: _Case) -> list[tuple[str, list[Any]]]:
    """``(description, per-parameter batch axis or None)`` configurations to test."""
    arrays = [i for i, (p, v) in enumerate(zip(case.params, case.values)) if p.is_array and v is not None]
    if not arrays:
        return []
    configs: list[tuple[str, list[Any]]] = []
    all0: list[Any] = [0 if i in arrays else None for i in range(len(case.params))]
    configs.append(("all array arguments batched (in_axes=0)", all0))
    if len(arrays) > 1:
        for i in arrays:
            one = [0 if j == i else None for j in range(len(case.params))]
            configs.append((f"only {case.params[i].name} batched", one))
    last: list[Any] = []
    for j, v in enumerate(case.values):
        if j not in arrays:
            last.append(None)
        elif isinstance(v, (list, tuple)):
            last.append([np.ndim(e) for e in v])
        else:
            last.append(np.ndim(v))
    if any((a != 0 if not isinstance(a, list) else any(x != 0 for x in a)) for a in last if a is not None):
        configs.append(("batch axis last (non-zero in_axes)", last))
    return configs


def _check_vmap(case: _Case, rtol: float | None, atol: float | None) -> None:
    if case.has_dynamic_sizes():
        return
    case.eager()
    for description, axes in _vmap_configs(case):
        batched_values: list[Any] = []
        in_axes: list[Any] = []
        for v, ax in zip(case.values, axes):
            if ax is None:
                batched_values.append(v)
                in_axes.append(None)
            elif isinstance(v, (list, tuple)):
                axl = ax if isinstance(ax, list) else [ax] * len(v)
                batched_values.append([_batch_leaf(e, a) for e, a in zip(v, axl)])
                in_axes.append(list(axl))
            else:
                batched_values.append(_batch_leaf(v, ax))
                in_axes.append(ax)
        arr_pos = [j for j, p in enumerate(case.params) if p.is_array]

        def per_arrays(*arrs: Any, _bv: list[Any] = batched_values, _pos: list[int] = arr_pos) -> Any:
            vals = list(_bv)
            for j, a in zip(_pos, arrs):
                vals[j] = a
            return case.call_values(vals)

        arr_args = [batched_values[j] for j in arr_pos]
        arr_axes = [in_axes[j] for j in arr_pos]
        try:
            got = jax.vmap(per_arrays, in_axes=tuple(arr_axes))(*arr_args)
        except Exception as e:  # noqa: BLE001
            raise _Failure(
                case.vmap_label(),
                f"jax.vmap of the op ({description}) raised {_describe_exc(e)}",
                "the vmap rule must handle in_dims of None (unbatched) and any batch axis; return "
                "(output, out_dims) with out_dims matching the output structure",
            ) from e
        examples = []
        for b in range(_BATCH):
            vals = []
            for v, ax in zip(batched_values, in_axes):
                if ax is None:
                    vals.append(v)
                elif isinstance(v, list):
                    vals.append([jnp.take(e, b, axis=a) for e, a in zip(v, ax)])
                else:
                    vals.append(jnp.take(v, b, axis=ax))
            examples.append(case.call_values(vals))
        expected = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *examples)
        mismatch = _compare_trees(expected, got, rtol=rtol, atol=atol, what=f"vmap vs a loop ({description})")
        if mismatch is not None:
            problem, err = mismatch
            raise _Failure(
                case.vmap_label(),
                problem + f"\n{str(err).strip()}",
                "the batched result must equal calling the op once per example and stacking "
                "(out_axes=0): check how the rule moves the batch axis (in_dims may be None or "
                "non-zero); a host op with vmap_method='expand_dims'/'broadcast_all' needs a "
                "kernel that handles a leading batch axis, otherwise use 'sequential'",
            ) from err


#: Up to this many elements in the floating inputs (and in the outputs), ``test_gradcheck``
#: builds the dense Jacobians (``custom_vjp.gradcheck``); above it, it checks random
#: directions, whose cost does not depend on the size of the Jacobian.
DENSE_GRADCHECK_MAX_ELEMENTS = 256

#: Random directions per floating input for the directional gradient check.
_DIRECTIONS = 2


def _is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says the machine (host or device) ran out of memory.

    >>> _is_out_of_memory(MemoryError()), _is_out_of_memory(ValueError("shape"))
    (True, False)
    """
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


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


def _check_gradcheck(case: _Case, rtol: float | None, atol: float | None) -> None:
    if not case.differentiable() or (case.is_host and case.op.definition.autograd is None):
        return
    if case.has_dynamic_sizes():
        return
    from custom_vjp import GradcheckError

    fn = case.float_fn()
    legend = ", ".join(f"input {k} = {case.leaf_names[i]}" for k, i in enumerate(case.float_idx))
    atol_, rtol_ = 1e-5 if atol is None else atol, 1e-3 if rtol is None else rtol
    n_in = sum(int(np.size(x)) for x in case.float_leaves)
    n_out = sum(int(np.size(o)) for o in jax.tree_util.tree_leaves(case._eager_out[0]) if _is_float_leaf(o))
    dense = max(n_in, n_out) <= DENSE_GRADCHECK_MAX_ELEMENTS
    try:
        with _x64_everywhere():
            failure = _run_gradcheck(dense, fn, case.float_leaves, atol=atol_, rtol=rtol_)
    except GradcheckError as e:
        raise _Failure(
            case.autograd_label(),
            f"gradients disagree with finite differences (float64; {legend}): {e}",
            "fix the backward formula (compare it with the derivative of the kernel); a formula "
            "that is only correct in one mode means backward is not the transpose of the forward",
        ) from e
    except Exception as e:  # noqa: BLE001
        if _is_out_of_memory(e):
            raise
        raise _Failure(
            case.autograd_label(),
            f"gradcheck (float64) raised {_describe_exc(e)}",
            "the op and its backward must run on float64 inputs (the fake should use x.dtype, not "
            "a fixed float32)",
        ) from e
    if failure is not None:
        raise _Failure(
            case.autograd_label(),
            f"gradients disagree with finite differences (float64, {n_in} input elements: checked "
            f"along random directions; {legend}): {failure}",
            "fix the backward formula (compare it with the derivative of the kernel); a formula "
            "that is only correct in one mode means backward is not the transpose of the forward",
        )


_CHECKS: dict[str, Callable[[_Case, float | None, float | None], None]] = {
    "test_schema": _check_schema,
    "test_autograd_registration": _check_autograd_registration,
    "test_faketensor": _check_faketensor,
    "test_aot_dispatch_dynamic": _check_aot_dispatch_dynamic,
    "test_vmap": _check_vmap,
    "test_gradcheck": _check_gradcheck,
}


_GRADIENT_CHECKS = ("test_autograd_registration", "test_gradcheck")


def _normalize_test_utils(test_utils: str | Iterable[str]) -> list[str]:
    """The check names in ``test_utils``; ``ValueError`` /test_utils/ for anything else.

    >>> _normalize_test_utils("test_vmap")
    ['test_vmap']
    >>> _normalize_test_utils(3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: opcheck: test_utils must be a check name or a sequence of check names (some of ...), got int 3
    """
    expected = list(DEFAULT_TEST_UTILS)
    if isinstance(test_utils, str):
        names: list[Any] = [test_utils]
    elif isinstance(test_utils, Iterable) and not isinstance(test_utils, (bytes, dict)):
        names = list(test_utils)
    else:
        raise ValueError(
            "opcheck: test_utils must be a check name or a sequence of check names "
            f"(some of {expected}), got {type(test_utils).__name__} {test_utils!r}"
        )
    unknown = [n for n in names if not isinstance(n, str) or n not in _CHECKS]
    if unknown:
        raise ValueError(f"opcheck: unknown test_utils {unknown}; expected some of {expected}")
    return names


def _check_arguments(
    op_name: str,
    args: Any,
    kwargs: Any,
    *,
    raise_exception: Any,
    atol: Any,
    rtol: Any,
    differentiable: Any,
) -> None:
    """Reject malformed ``opcheck`` arguments before any check runs, naming the parameter.

    >>> _check_arguments("a::b", (1,), None, raise_exception=True, atol="a", rtol=None, differentiable=True)
    Traceback (most recent call last):
    ...
    ValueError: opcheck(a::b): atol must be a non-negative number or None, got str 'a'
    """
    if not isinstance(args, (tuple, list)):
        raise TypeError(
            f"opcheck({op_name}): args must be a tuple of the op's positional arguments, got "
            f"{type(args).__name__}; for a single argument write opcheck(op, (x,))"
        )
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(
            f"opcheck({op_name}): kwargs must be a dict of keyword arguments or None, got {type(kwargs).__name__}"
        )
    for pname, value in (("atol", atol), ("rtol", rtol)):
        if value is None:
            continue
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        if not ok or not np.isfinite(value) or value < 0:
            raise ValueError(
                f"opcheck({op_name}): {pname} must be a non-negative number or None, got "
                f"{type(value).__name__} {value!r}"
            )
    for pname, value in (("raise_exception", raise_exception), ("differentiable", differentiable)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"opcheck({op_name}): {pname} must be True or False, got {type(value).__name__} {value!r}")


def opcheck(
    op: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None = None,
    *,
    test_utils: str | Iterable[str] = DEFAULT_TEST_UTILS,
    raise_exception: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    differentiable: bool = True,
) -> dict[str, Any]:
    """Check ``op``'s registrations against each other on ``args``/``kwargs``.

    Returns ``{check: "SUCCESS"}`` for each check in ``test_utils`` (all six by default).
    A failing check raises :class:`OpCheckError`; with ``raise_exception=False`` its
    entry holds the exception instead and the other checks still run.  ``atol``/``rtol``
    override the tolerances of the numeric comparisons.  ``args`` is a tuple of the op's
    positional arguments.  With ``differentiable=False`` (a sample not meant to be
    differentiated) ``test_autograd_registration`` and ``test_gradcheck`` report
    ``"SKIPPED"`` and ``test_aot_dispatch_dynamic`` compares values only.  A check that
    runs out of memory raises :class:`MemoryError` naming the op and the check, never an
    ``OpCheckError`` blaming a registration.

    >>> import jax, jax.numpy as jnp, jaxops
    >>> @jaxops.custom_op("opcheckdoc::cube", mutates_args=())
    ... def cube(x: jax.Array) -> jax.Array:
    ...     return x ** 3
    >>> from jaxops.opcheck import opcheck
    >>> sorted(opcheck(cube, (jnp.arange(3.0),)).values())
    ['SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS', 'SUCCESS']
    >>> opcheck(cube, (jnp.arange(3.0),), test_utils="test_gradcheck", differentiable=False)
    {'test_gradcheck': 'SKIPPED'}
    """
    names = _normalize_test_utils(test_utils)
    the_op = _registry.as_op(op)
    _check_arguments(
        the_op.name, args, kwargs, raise_exception=raise_exception, atol=atol, rtol=rtol,
        differentiable=differentiable,
    )
    case = _Case(the_op, args, kwargs or {})
    case.want_grad = bool(differentiable)
    results: dict[str, Any] = {}
    for name in names:
        if not differentiable and name in _GRADIENT_CHECKS:
            results[name] = "SKIPPED"
            continue
        try:
            with _inside_opcheck():
                _CHECKS[name](case, rtol, atol)
        except _Failure as f:
            err = OpCheckError(the_op.name, name, f.registration, f.problem, f.fix)
            err.__cause__ = f.__cause__
            if raise_exception:
                raise err from f.__cause__
            results[name] = err
            continue
        except Exception as e:  # noqa: BLE001 - a bug in the check must still name the op
            if _is_out_of_memory(e):
                oom = MemoryError(
                    f"opcheck({the_op.name}) ran out of memory in {name} ({_describe_exc(e)}); this "
                    "says nothing about the op's registrations: use smaller sample inputs, or leave "
                    f"{name} out of test_utils"
                )
                if raise_exception:
                    raise oom from e
                results[name] = oom
                continue
            err = OpCheckError(
                the_op.name, name, "unknown (opcheck could not run this check)",
                f"the check raised {_describe_exc(e)}\n{traceback.format_exc(limit=3)}",
                "report this with the op and arguments",
            )
            if raise_exception:
                raise err from e
            results[name] = err
            continue
        results[name] = "SUCCESS"
    return results


_INSIDE = contextvars.ContextVar("jaxops_inside_opcheck", default=0)


def is_inside_opcheck() -> bool:
    """``True`` only while an ``opcheck`` check runs (PyTorch's ``is_inside_opcheck_mode``).

    Kernels, fakes and backwards can use it, e.g. to skip an expensive validation that
    opcheck does itself.

    >>> import jaxops
    >>> jaxops.is_inside_opcheck()
    False
    """
    return _INSIDE.get() > 0


@contextlib.contextmanager
def _inside_opcheck() -> Iterator[None]:
    token = _INSIDE.set(_INSIDE.get() + 1)
    try:
        yield
    finally:
        _INSIDE.reset(token)


__all__ = ["DEFAULT_TEST_UTILS", "OpCheckError", "is_inside_opcheck", "opcheck"]
