"""Generated opcheck tests: every op with sample inputs in the example modules and below.

``generate_opcheck_tests`` adds ``test_opcheck_<check>`` tests parametrized over the ops
of the namespaces; known failures are listed in ``FAILURES`` with a reason (strict xfail).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops.samples import register_sample_inputs
from jaxops.testing import generate_opcheck_tests

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load_example(name: str) -> Any:
    """Import ``examples/<name>.py`` (it registers its ops and sample inputs); None if absent."""
    path = EXAMPLES / f"{name}.py"
    if not path.exists():
        return None
    module_name = f"_jaxops_examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


NAMESPACES = ["ocgen"]
if _load_example("numpy_reference_ops") is not None:
    NAMESPACES.append("numpy_ref")
if _load_example("mlp_ops") is not None:
    NAMESPACES.append("mlp")


# ------------------------------------------------------------------ ops defined here
@jaxops.custom_op("ocgen::softplus", mutates_args=(), host=True)
def softplus(x: jax.Array, beta: float = 1.0) -> jax.Array:
    return np.log1p(np.exp(beta * x)) / beta


@softplus.register_fake
def _softplus_fake(x: Any, beta: float = 1.0) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _softplus_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.beta = inputs[1]


def _softplus_backward(ctx: Any, g: Any) -> tuple[Any, None]:
    # d/dx softplus = sigmoid(beta x) = 1 - exp(-beta * softplus)
    return g * (1 - jnp.exp(-ctx.beta * ctx.out)), None


def _softplus_setup_out(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    _softplus_setup(ctx, inputs, output)
    ctx.out = output


softplus.register_autograd(_softplus_backward, setup_context=_softplus_setup_out)


@register_sample_inputs(softplus)
def _softplus_samples() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    return [((jnp.linspace(-2.0, 2.0, 5),), {}), ((jnp.ones((2, 3)),), {"beta": 2.0})]


@jaxops.custom_op("ocgen::matvec", mutates_args=())
def matvec(a: jax.Array, v: jax.Array) -> jax.Array:
    return a @ v


@register_sample_inputs(matvec)
def _matvec_samples() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    return [((jnp.arange(6.0).reshape(2, 3), jnp.array([1.0, -1.0, 0.5])), {})]


@jaxops.custom_op("ocgen::histogram", mutates_args=(), host=True)
def histogram(x: jax.Array, bins: int) -> jax.Array:
    return np.bincount(np.asarray(x), minlength=bins)[:bins].astype(np.int32)


@histogram.register_fake
def _histogram_fake(x: Any, bins: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((bins,), jnp.int32)


@register_sample_inputs(histogram)
def _histogram_samples() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    return [((jnp.array([0, 1, 1, 3]), 4), {})]


@jaxops.custom_op("ocgen::stale_fake", mutates_args=(), host=True)
def stale_fake(x: jax.Array) -> jax.Array:
    return np.concatenate([x, x])


@stale_fake.register_fake
def _stale(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)  # known wrong: kept to exercise the xfail path


stale_fake.register_autograd(lambda ctx, g: g[: g.shape[0] // 2] + g[g.shape[0] // 2 :])


@register_sample_inputs(stale_fake)
def _stale_samples() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    return [((jnp.arange(3.0),), {})]


_STALE = "the fake predates the doubling in the kernel (kept broken on purpose)"
FAILURES: dict[str, dict[str, str]] = {
    "ocgen::stale_fake": {
        "test_autograd_registration": _STALE,
        "test_faketensor": _STALE,
        "test_aot_dispatch_dynamic": _STALE,
        "test_vmap": _STALE,
        "test_gradcheck": _STALE,
    },
}

GENERATED = generate_opcheck_tests(globals(), NAMESPACES, FAILURES)


def test_generated_one_test_per_check():
    assert GENERATED == [
        "test_opcheck_schema",
        "test_opcheck_autograd_registration",
        "test_opcheck_faketensor",
        "test_opcheck_aot_dispatch_dynamic",
        "test_opcheck_vmap",
        "test_opcheck_gradcheck",
    ]


def test_failures_dict_is_validated():
    with pytest.raises(ValueError, match="unknown check 'test_vmapp'"):
        generate_opcheck_tests({}, "ocgen", {"ocgen::softplus": {"test_vmapp": "typo"}})
    with pytest.raises(ValueError, match="is not an op with sample inputs"):
        generate_opcheck_tests({}, "ocgen", {"ocgen::gone": {"test_vmap": "removed op"}})
    with pytest.raises(ValueError, match="needs a reason"):
        generate_opcheck_tests({}, "ocgen", {"ocgen::softplus": {"test_vmap": ""}})
    with pytest.raises(ValueError, match="already defines test_opcheck_vmap"):
        generate_opcheck_tests({"test_opcheck_vmap": None}, "ocgen", test_utils=["test_vmap"])


def test_generated_tests_carry_strict_xfail_marks():
    g: dict[str, Any] = {}
    generate_opcheck_tests(g, "ocgen", FAILURES, test_utils=["test_faketensor"])
    params = g["test_opcheck_faketensor"].pytestmark[0].args[1]
    by_id = {p.id: p for p in params}
    assert set(by_id) >= {"ocgen::softplus", "ocgen::stale_fake", "ocgen::matvec"}
    (mark,) = by_id["ocgen::stale_fake"].marks
    assert mark.name == "xfail" and mark.kwargs["strict"] is True and mark.kwargs["reason"] == _STALE
    assert not by_id["ocgen::softplus"].marks
