"""Tests for ``custom_vjp.gradcheck`` / ``gradgradcheck`` on plain JAX and raw custom_vjp functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import custom_vjp
from custom_vjp import GradcheckError, gradcheck, gradgradcheck


def _bad_grad_for_second_input():
    @jax.custom_vjp
    def f(x, y):
        return x * y

    f.defvjp(lambda x, y: (x * y, (x, y)), lambda r, g: (g * r[1], 2.0 * g * r[0]))
    return f


def test_passes_for_plain_jax_function_in_both_modes():
    assert gradcheck(lambda x, y: jnp.sin(x) * y**2, (jnp.arange(3.0), jnp.ones(3))) is True


def test_accepts_float32_inputs_and_checks_in_float64():
    x = jnp.linspace(0.1, 1.0, 4, dtype=jnp.float32)
    seen = []

    def f(x):
        seen.append(x.dtype)
        return jnp.exp(x)

    assert gradcheck(f, (x,))
    assert all(d == jnp.float64 for d in seen)
    # x64 is only enabled inside the check
    assert jnp.ones(1, dtype=float).dtype == jnp.float32


def test_single_array_input_is_accepted():
    assert gradcheck(jnp.tanh, jnp.arange(3.0))


def test_wrong_gradient_names_input_and_output():
    f = _bad_grad_for_second_input()
    with pytest.raises(GradcheckError, match="output 0 with respect to input 1") as info:
        gradcheck(f, (jnp.arange(1.0, 3.0), jnp.ones(2)))
    text = str(info.value)
    assert "numerical:" in text and "analytical:" in text
    assert "reverse mode" in text
    assert isinstance(info.value, RuntimeError)


def test_raise_exception_false_returns_false():
    f = _bad_grad_for_second_input()
    assert gradcheck(f, (jnp.ones(2), jnp.ones(2)), raise_exception=False) is False


def test_output_index_counts_output_leaves():
    @jax.custom_vjp
    def two(x):
        return x * 2, x * 3

    two.defvjp(lambda x: ((x * 2, x * 3), None), lambda _, g: (g[0] * 2 + g[1] * 4,))
    with pytest.raises(GradcheckError, match="Jacobian mismatch for output 1 with respect to input 0"):
        gradcheck(two, (jnp.ones(2),))


def test_raw_custom_vjp_is_checked_in_reverse_mode_only():
    @jax.custom_vjp
    def f(x):
        return jnp.sin(x)

    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    assert gradcheck(f, (jnp.arange(3.0),))


def test_wrong_forward_mode_is_caught():
    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    f.defjvp(lambda p, t: (jnp.sin(p[0]), jnp.cos(p[0]) * t[0] * 1.5))
    # reverse mode is derived by transposing the (wrong) jvp, so both disagree with FD
    with pytest.raises(GradcheckError, match="output 0 with respect to input 0"):
        gradcheck(f, (jnp.arange(3.0),))


def _is_jvp_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer) and "JVP" in type(x).__name__


def test_forward_unsupported_message_skips_forward():
    def host_only_backward(x):
        # what a Function with a host-only backward raises under forward mode
        if _is_jvp_tracer(x):
            raise NotImplementedError(
                "Trying to use forward AD with MyFn that does not support it"
            )
        return x**2

    assert gradcheck(host_only_backward, (jnp.ones(2),))


def test_other_forward_errors_propagate():
    def f(x):
        if _is_jvp_tracer(x):
            raise NotImplementedError("something else")
        return x * 2

    with pytest.raises(NotImplementedError, match="something else"):
        gradcheck(f, (jnp.ones(2),))


def test_non_float_inputs_and_outputs_pass_through():
    def f(x, n, scale, idx):
        return x[idx] * scale * n, jnp.arange(3)

    assert gradcheck(f, (jnp.arange(4.0), 3, 2.0, jnp.array([0, 2])))


def test_input_indices_count_non_float_positions():
    @jax.custom_vjp
    def f(n, x):
        return x * 2

    f.defvjp(lambda n, x: (x * 2, None), lambda _, g: (None, g * 3))
    with pytest.raises(GradcheckError, match="with respect to input 1"):
        gradcheck(lambda n, x: f(jnp.asarray(n), x), (jnp.arange(2), jnp.ones(2)))


def test_no_float_inputs_raises_value_error():
    with pytest.raises(ValueError, match="none of the inputs is a floating-point array"):
        gradcheck(lambda n: n * 2, (jnp.arange(3),))


def test_no_float_outputs_raises_value_error():
    with pytest.raises(ValueError, match="no floating-point outputs"):
        gradcheck(lambda x: jnp.argmax(x), (jnp.arange(3.0),))


def test_pytree_outputs():
    assert gradcheck(lambda x: {"a": jnp.sin(x), "b": [x * x]}, (jnp.ones(3),))


def test_custom_tolerances():
    f = jnp.sin
    assert gradcheck(f, (jnp.ones(2),), eps=1e-3, atol=1e-4, rtol=1e-4)


def test_gradgradcheck_passes():
    assert gradgradcheck(lambda x, y: jnp.sin(x) * y**3, (jnp.arange(3.0), jnp.ones(3)))


def test_gradgradcheck_with_explicit_grad_outputs():
    assert gradgradcheck(lambda x: x**3, (jnp.arange(3.0),), (jnp.array([1.0, 2.0, 3.0]),))


def test_gradgradcheck_bad_grad_outputs_shape():
    with pytest.raises(ValueError, match="do not match the output shapes"):
        gradgradcheck(lambda x: x**3, (jnp.arange(3.0),), (jnp.ones(2),))


def test_gradgradcheck_detects_wrong_second_derivative():
    @jax.custom_vjp
    def wrong_second(x):
        return x**3

    def bwd(x, g):  # right first derivative, but its own derivative is lost
        return (g * 3 * jax.lax.stop_gradient(x) ** 2,)

    wrong_second.defvjp(lambda x: (x**3, x), bwd)
    assert gradcheck(wrong_second, (jnp.arange(1.0, 3.0),))
    with pytest.raises(GradcheckError, match="with respect to input 0") as info:
        gradgradcheck(wrong_second, (jnp.arange(1.0, 3.0),))
    assert "output 0 (the gradient with respect to input 0)" in str(info.value)


def test_exported_from_package():
    assert custom_vjp.GradcheckError is GradcheckError
    assert issubclass(GradcheckError, RuntimeError)
