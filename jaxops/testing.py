"""Pytest helpers: generate ``opcheck`` tests for every op with sample inputs.

The analogue of PyTorch's ``torch.testing._internal.optests.generate_opcheck_tests``.
This module imports pytest; it is meant for test files only (``jaxops.opcheck`` itself
imports nothing test-only).

In a test file::

    import jaxops.testing
    import mylib.ops  # defines the ops and registers their sample inputs

    jaxops.testing.generate_opcheck_tests(
        globals(),
        namespaces=["mylib"],
        failures_dict={"mylib::nonzero": {"test_vmap": "data-dependent output size"}},
    )

This adds one parametrized test per check (``test_opcheck_schema``,
``test_opcheck_faketensor``, ...) with one case per op; a case listed in
``failures_dict`` is a strict xfail with the given reason (so it fails loudly once the
op is fixed and the entry should go).  A reason starting with ``"skip:"`` skips instead
(for checks that cannot run at all, e.g. they would hang).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from jaxops.opcheck import DEFAULT_TEST_UTILS, opcheck
from jaxops.samples import ops_with_samples, sample_inputs

FailuresDict = Mapping[str, Mapping[str, str]]


def _validate_failures(failures: FailuresDict, op_names: set[str], namespaces: list[str]) -> None:
    for op_name, checks in failures.items():
        ns = op_name.split("::")[0]
        if ns in namespaces and op_name not in op_names:
            raise ValueError(
                f"generate_opcheck_tests: failures_dict names {op_name!r}, which is not an op with sample "
                f"inputs in {namespaces}; remove the entry (ops: {sorted(op_names)})"
            )
        if not isinstance(checks, Mapping):
            raise TypeError(
                f"generate_opcheck_tests: failures_dict[{op_name!r}] must map check names to reasons, "
                f"e.g. {{'test_vmap': 'why'}}, got {type(checks).__name__}"
            )
        for check, reason in checks.items():
            if check not in DEFAULT_TEST_UTILS:
                raise ValueError(
                    f"generate_opcheck_tests: failures_dict[{op_name!r}] has unknown check {check!r}; "
                    f"expected one of {list(DEFAULT_TEST_UTILS)}"
                )
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(
                    f"generate_opcheck_tests: failures_dict[{op_name!r}][{check!r}] needs a reason string"
                )


def _make_test(check: str, params: list[Any]) -> Any:
    @pytest.mark.parametrize("op_name", params)
    def test(op_name: str) -> None:
        samples = sample_inputs(op_name)
        assert samples, f"{op_name}: no sample inputs"
        for args, kwargs in samples:
            opcheck(op_name, args, kwargs, test_utils=[check])

    test.__name__ = f"test_opcheck_{check.removeprefix('test_')}"
    test.__doc__ = f"opcheck {check} on every sample input of each op."
    return test


def generate_opcheck_tests(
    testcase_globals_or_module: dict[str, Any] | types.ModuleType,
    namespaces: str | Iterable[str],
    failures_dict: FailuresDict | None = None,
    *,
    test_utils: Iterable[str] = DEFAULT_TEST_UTILS,
) -> list[str]:
    """Add parametrized pytest tests (one per check, one case per op) to a test module.

    ``testcase_globals_or_module`` is the test file's ``globals()`` or a module object;
    ``namespaces`` the op namespaces to cover (ops need registered sample inputs, see
    :mod:`jaxops.samples`); ``failures_dict`` maps ``"ns::op"`` to ``{check: reason}``
    for known failures (strict xfail).  Returns the names of the generated tests.

    >>> import jax, jax.numpy as jnp, jaxops
    >>> from jaxops.samples import register_sample_inputs
    >>> @jaxops.custom_op("testingdoc::neg", mutates_args=())
    ... def neg(x: jax.Array) -> jax.Array:
    ...     return -x
    >>> _ = register_sample_inputs(neg, lambda: [((jnp.ones(2),), {})])
    >>> g = {}
    >>> generate_opcheck_tests(g, "testingdoc", test_utils=["test_vmap"])
    ['test_opcheck_vmap']
    """
    target = (
        testcase_globals_or_module.__dict__
        if isinstance(testcase_globals_or_module, types.ModuleType)
        else testcase_globals_or_module
    )
    nss = [namespaces] if isinstance(namespaces, str) else list(namespaces)
    checks = list(test_utils)
    unknown = [c for c in checks if c not in DEFAULT_TEST_UTILS]
    if unknown:
        raise ValueError(f"generate_opcheck_tests: unknown test_utils {unknown}; expected some of {list(DEFAULT_TEST_UTILS)}")
    failures = dict(failures_dict or {})
    ops = ops_with_samples(nss)
    op_names = [op.name for op in ops]
    _validate_failures(failures, set(op_names), nss)
    generated = []
    for check in checks:
        params = []
        for name in op_names:
            reason = failures.get(name, {}).get(check)
            marks: list[Any] = []
            if reason is not None:
                if reason.startswith("skip:"):
                    marks.append(pytest.mark.skip(reason=reason[5:].strip()))
                else:
                    marks.append(pytest.mark.xfail(reason=reason, strict=True, raises=Exception))
            params.append(pytest.param(name, marks=marks, id=name))
        if not params:
            params.append(pytest.param(None, marks=pytest.mark.skip(reason=f"no ops with sample inputs in {nss}"), id="none"))
        test = _make_test(check, params)
        if test.__name__ in target:
            raise ValueError(f"generate_opcheck_tests: the test module already defines {test.__name__}")
        target[test.__name__] = test
        generated.append(test.__name__)
    return generated


__all__ = ["generate_opcheck_tests"]
