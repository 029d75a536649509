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

Known failures can also live in a JSON file (PyTorch's failures dict), passed as
``failures_dict_path=``::

    {"mylib::nonzero": {"test_vmap": {"status": "xfail", "comment": "data-dependent size"}},
     "mylib::slow":    {"test_gradcheck": {"status": "skip", "comment": "hangs"}}}

``"xfail"`` is a strict xfail and ``"skip"`` a skip, with ``comment`` as the reason.  A
status other than those, a check name that is not an opcheck check, or an op that is not
among the generated ones raises ``RuntimeError`` when the tests are generated.

Regenerating the file: run the tests with ``JAXOPS_OPCHECK_ACCEPT=1`` in the environment
(PyTorch's ``PYTORCH_OPCHECK_ACCEPT``).  Then no case is xfailed; each one runs and the file
is rewritten as it goes: a failing case gets an ``xfail`` entry (its comment kept, or
``""``), a passing case loses its entry, ``skip`` entries stay.  Review the diff, fill in
the comments, commit it.
"""

from __future__ import annotations

import json
import os
import pathlib
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


#: Set to ``1`` to rewrite the failures file from the results of a run (see the module doc).
ACCEPT_ENV = "JAXOPS_OPCHECK_ACCEPT"
_STATUSES = ("xfail", "skip")


class FailuresFile:
    """A JSON failures file: ``{"ns::op": {check: {"status": ..., "comment": ...}}}``.

    >>> import json, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "failures.json")
    >>> _ = open(path, "w").write(json.dumps({"a::b": {"test_vmap": {"status": "skip", "comment": "slow"}}}))
    >>> FailuresFile(path).entry("a::b", "test_vmap")
    {'status': 'skip', 'comment': 'slow'}
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(path)
        try:
            raw = json.loads(self.path.read_text()) if self.path.exists() else {}
        except json.JSONDecodeError as e:
            raise RuntimeError(f"failures file {self.path}: not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise RuntimeError(f"failures file {self.path}: expected a JSON object keyed by 'ns::op'")
        self.data: dict[str, dict[str, dict[str, str]]] = raw

    def validate(self, op_names: set[str], namespaces: list[str]) -> None:
        """``RuntimeError`` for a bad status, an unknown check or an op that does not exist."""
        for op_name, checks in self.data.items():
            if op_name not in op_names:
                raise RuntimeError(
                    f"failures file {self.path}: the op {op_name!r} does not exist (not a registered op "
                    f"with sample inputs in namespaces {namespaces}); remove its entry or fix the name"
                )
            if not isinstance(checks, dict):
                raise RuntimeError(
                    f"failures file {self.path}: {op_name!r} must map check names to "
                    '{"status": ..., "comment": ...}'
                )
            for check, entry in checks.items():
                if check not in DEFAULT_TEST_UTILS:
                    raise RuntimeError(
                        f"failures file {self.path}: {op_name!r} has the key {check!r}, which should "
                        f"begin with one of {list(DEFAULT_TEST_UTILS)} (the opcheck checks)"
                    )
                status = entry.get("status") if isinstance(entry, dict) else None
                if status not in _STATUSES:
                    raise RuntimeError(
                        f"failures file {self.path}: {op_name!r} / {check!r}: expected status to be one "
                        f"of {list(_STATUSES)} but got status={status}"
                    )

    def entry(self, op_name: str, check: str) -> dict[str, str] | None:
        return self.data.get(op_name, {}).get(check)

    def record(self, op_name: str, check: str, failed: bool) -> None:
        """Accept mode: make the file say ``xfail`` for a failing case and nothing for a passing one."""
        old = self.entry(op_name, check)
        if old is not None and old.get("status") == "skip":
            return
        if failed:
            comment = (old or {}).get("comment", "")
            self.data.setdefault(op_name, {})[check] = {"comment": comment, "status": "xfail"}
        elif old is not None:
            del self.data[op_name][check]
            if not self.data[op_name]:
                del self.data[op_name]
        self.save()

    def save(self) -> None:
        ordered = {op: dict(sorted(checks.items())) for op, checks in sorted(self.data.items())}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(ordered, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)


def _make_test(check: str, params: list[Any], accept: FailuresFile | None = None) -> Any:
    @pytest.mark.parametrize("op_name", params)
    def test(op_name: str) -> None:
        samples = sample_inputs(op_name)
        assert samples, f"{op_name}: no sample inputs"
        if accept is not None:
            failed = False
            for args, kwargs in samples:
                try:
                    opcheck(op_name, args, kwargs, test_utils=[check])
                except Exception:  # noqa: BLE001 - accept mode records every failure
                    failed = True
                    break
            accept.record(op_name, check, failed)
            return
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
    failures_dict_path: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Add parametrized pytest tests (one per check, one case per op) to a test module.

    ``testcase_globals_or_module`` is the test file's ``globals()`` or a module object;
    ``namespaces`` the op namespaces to cover (ops need registered sample inputs, see
    :mod:`jaxops.samples`); ``failures_dict`` maps ``"ns::op"`` to ``{check: reason}``
    for known failures (strict xfail); ``failures_dict_path`` names a JSON failures file
    (see the module doc; ``JAXOPS_OPCHECK_ACCEPT=1`` rewrites it from a run).  Returns the
    names of the generated tests.

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
    ffile = FailuresFile(failures_dict_path) if failures_dict_path is not None else None
    if ffile is not None:
        ffile.validate(set(op_names), nss)
    accept = ffile if ffile is not None and os.environ.get(ACCEPT_ENV, "") not in ("", "0") else None
    generated = []
    for check in checks:
        params = []
        for name in op_names:
            reason = failures.get(name, {}).get(check)
            marks: list[Any] = []
            entry = ffile.entry(name, check) if ffile is not None else None
            if entry is not None and reason is None:
                comment = entry.get("comment") or f"listed in {ffile.path}"  # type: ignore[union-attr]
                if entry["status"] == "skip":
                    marks.append(pytest.mark.skip(reason=comment))
                elif accept is None:
                    marks.append(pytest.mark.xfail(reason=comment, strict=True, raises=Exception))
            elif reason is not None:
                if reason.startswith("skip:"):
                    marks.append(pytest.mark.skip(reason=reason[5:].strip()))
                else:
                    marks.append(pytest.mark.xfail(reason=reason, strict=True, raises=Exception))
            params.append(pytest.param(name, marks=marks, id=name))
        if not params:
            params.append(pytest.param(None, marks=pytest.mark.skip(reason=f"no ops with sample inputs in {nss}"), id="none"))
        test = _make_test(check, params, accept)
        if test.__name__ in target:
            raise ValueError(f"generate_opcheck_tests: the test module already defines {test.__name__}")
        target[test.__name__] = test
        generated.append(test.__name__)
    return generated


__all__ = ["ACCEPT_ENV", "FailuresFile", "generate_opcheck_tests"]
