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
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from jaxops import registry as _registry
from jaxops.opcheck_case import CheckFailure, OpCase, describe_exc, is_out_of_memory
from jaxops.opcheck_checks import (
    check_aot_dispatch_dynamic,
    check_autograd_registration,
    check_faketensor,
    check_schema,
    check_vmap,
)
from jaxops.opcheck_gradients import DENSE_GRADCHECK_MAX_ELEMENTS, check_gradcheck

DEFAULT_TEST_UTILS: tuple[str, ...] = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_dynamic",
    "test_vmap",
    "test_gradcheck",
)


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



_CHECKS: dict[str, Callable[[OpCase, float | None, float | None], None]] = {
    "test_schema": check_schema,
    "test_autograd_registration": check_autograd_registration,
    "test_faketensor": check_faketensor,
    "test_aot_dispatch_dynamic": check_aot_dispatch_dynamic,
    "test_vmap": check_vmap,
    "test_gradcheck": check_gradcheck,
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
    case = OpCase(the_op, args, kwargs or {})
    case.want_grad = bool(differentiable)
    results: dict[str, Any] = {}
    for name in names:
        if not differentiable and name in _GRADIENT_CHECKS:
            results[name] = "SKIPPED"
            continue
        try:
            with _inside_opcheck():
                _CHECKS[name](case, rtol, atol)
        except CheckFailure as f:
            err = OpCheckError(the_op.name, name, f.registration, f.problem, f.fix)
            err.__cause__ = f.__cause__
            if raise_exception:
                raise err from f.__cause__
            results[name] = err
            continue
        except Exception as e:  # noqa: BLE001 - a bug in the check must still name the op
            if is_out_of_memory(e):
                oom = MemoryError(
                    f"opcheck({the_op.name}) ran out of memory in {name} ({describe_exc(e)}); this "
                    "says nothing about the op's registrations: use smaller sample inputs, or leave "
                    f"{name} out of test_utils"
                )
                if raise_exception:
                    raise oom from e
                results[name] = oom
                continue
            err = OpCheckError(
                the_op.name, name, "unknown (opcheck could not run this check)",
                f"the check raised {describe_exc(e)}\n{traceback.format_exc(limit=3)}",
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


__all__ = [
    "DEFAULT_TEST_UTILS",
    "DENSE_GRADCHECK_MAX_ELEMENTS",
    "OpCheckError",
    "is_inside_opcheck",
    "opcheck",
]
