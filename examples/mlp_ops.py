"""Example op module for the ``jaxops`` command line: a two-layer MLP's ops.

``jaxops list examples/mlp_ops.py`` shows the ops, ``jaxops check
examples/mlp_ops.py`` runs ``opcheck`` on their sample inputs, and::

    jaxops plan examples/mlp_ops.py:loss \\
        --shape params.w1=16,32 --shape params.b1=32 \\
        --shape params.w2=32,4 --shape params.b2=4 \\
        --shape x=b,16 --shape y=b:int32

plans :func:`loss` with a symbolic batch ``b``.

The ops cover the main kinds:

* ``mlp::linear``: a traceable JAX body (JAX derives fake, autograd and vmap);
* ``mlp::relu``: a host NumPy body with a fake, a registered backward and a
  vmap rule (the kernel handles a whole batch in one call);
* ``mlp::log_softmax``: a traceable body with a registered backward.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxops
from jaxops.samples import register_sample_inputs


@jaxops.custom_op("mlp::linear", mutates_args=())
def linear(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``x @ w + b`` (traceable)."""
    return x @ w + b


@jaxops.custom_op("mlp::relu", mutates_args=(), host=True)
def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)`` computed by NumPy on the host."""
    return np.maximum(x, 0).astype(x.dtype)


@relu.register_fake
def _relu_fake(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _relu_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(output)


def _relu_backward(ctx: Any, g: jax.Array) -> jax.Array:
    (y,) = ctx.saved_tensors
    return jnp.where(y > 0, g, jnp.zeros_like(g))


relu.register_autograd(_relu_backward, setup_context=_relu_setup)


@relu.register_vmap
def _relu_vmap(info: Any, in_dims: tuple[Any, ...], x: jax.Array) -> tuple[jax.Array, Any]:
    # Elementwise: the batched array goes to the host kernel in one call.
    return relu(x), in_dims[0]


@jaxops.custom_op("mlp::log_softmax", mutates_args=())
def log_softmax(x: jax.Array) -> jax.Array:
    """Log-softmax over the last axis (traceable, with a registered backward)."""
    return x - jax.scipy.special.logsumexp(x, axis=-1, keepdims=True)


def _log_softmax_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(output)


def _log_softmax_backward(ctx: Any, g: jax.Array) -> jax.Array:
    (y,) = ctx.saved_tensors
    return g - jnp.exp(y) * jnp.sum(g, axis=-1, keepdims=True)


log_softmax.register_autograd(_log_softmax_backward, setup_context=_log_softmax_setup)


def _key(i: int) -> jax.Array:
    return jax.random.key(i)


@register_sample_inputs(linear)
def _linear_samples() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    x = jax.random.normal(_key(0), (5, 4))
    w = jax.random.normal(_key(1), (4, 3))
    b = jax.random.normal(_key(2), (3,))
    return [((x, w, b), {})]


@register_sample_inputs(relu)
def _relu_samples() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    # Values away from 0, where relu is not differentiable (finite differences).
    x = jax.random.normal(_key(3), (4, 6))
    x = jnp.where(jnp.abs(x) < 0.1, 0.5, x)
    return [((x,), {}), ((x[0],), {})]


@register_sample_inputs(log_softmax)
def _log_softmax_samples() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    return [((jax.random.normal(_key(4), (3, 5)),), {})]


def init_params(key: jax.Array, d_in: int = 16, d_hidden: int = 32, n_classes: int = 4) -> dict[str, jax.Array]:
    """Random MLP parameters ``{"w1", "b1", "w2", "b2"}``."""
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (d_in, d_hidden)) / np.sqrt(d_in),
        "b1": jnp.zeros((d_hidden,)),
        "w2": jax.random.normal(k2, (d_hidden, n_classes)) / np.sqrt(d_hidden),
        "b2": jnp.zeros((n_classes,)),
    }


def loss(params: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of the MLP on ``x`` (batch, features) with integer labels ``y``."""
    h = relu(linear(x, params["w1"], params["b1"]))
    logp = log_softmax(linear(h, params["w2"], params["b2"]))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
