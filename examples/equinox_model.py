"""An Equinox model built from jaxops ops of each kind, and its plain-JAX twin.

Used by ``notebooks/equinox_training.ipynb``, ``tests/test_equinox.py`` and
``bench/equinox_step.py``.  The model is a small MLP classifier:

* ``eqxdemo::dense`` — a traceable op with ``register_autograd`` (``x @ w + b``);
* ``mlp::relu`` (from ``examples/mlp_ops.py``) — a host (NumPy) op with a fake, a backward and a vmap rule;
* :class:`Norm` — a ``custom_vjp.Function`` whose first argument is an
  ``eqx.Module`` (its array leaves get gradients from the user's ``backward``).

``make_model(key, activation="host")`` uses the host ReLU; ``activation="jax"``
uses ``jax.nn.relu`` (everything then compiles to the same XLA program as the
twin, which is what ``bench/equinox_step.py`` compares).  ``twin(model)`` is the
same model written in plain JAX with the same parameters.

>>> import jax
>>> model = make_model(jax.random.key(0))
>>> model(jax.numpy.ones((2, 8))).shape
(2, 4)
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import jaxops
from custom_vjp import Function
from examples import mlp_ops


# --------------------------------------------------------------------- the ops
@jaxops.custom_op("eqxdemo::dense", mutates_args=())
def dense(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``x @ w + b`` (traceable; its backward is registered below)."""
    return x @ w + b


def _dense_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    x, w, _ = inputs
    ctx.save_for_backward(x, w)


def _dense_backward(ctx: Any, g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, w = ctx.saved_tensors
    gb = g.reshape(-1, g.shape[-1]).sum(0)
    return g @ w.T, x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1]), gb


dense.register_autograd(_dense_backward, setup_context=_dense_setup)


# The host ReLU (NumPy kernel, fake, backward, vmap rule) of the CLI's example module.
relu = mlp_ops.relu


# -------------------------------------------------------------- the Function
class Scale(eqx.Module):
    """A learnable per-feature scale and shift (an ``eqx.Module`` passed to :class:`Norm`)."""

    gamma: jax.Array
    beta: jax.Array
    eps: float = eqx.field(static=True, default=1e-5)


class Norm(Function):
    """Layer norm over the last axis with a learnable :class:`Scale`, as a ``custom_vjp.Function``.

    ``backward`` returns a ``Scale``-shaped gradient for the module argument.
    """

    @staticmethod
    def forward(scale: Scale, x: jax.Array) -> jax.Array:
        mu = x.mean(-1, keepdims=True)
        rstd = jax.lax.rsqrt(((x - mu) ** 2).mean(-1, keepdims=True) + scale.eps)
        return (x - mu) * rstd * scale.gamma + scale.beta

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        scale, x = inputs
        mu = x.mean(-1, keepdims=True)
        rstd = jax.lax.rsqrt(((x - mu) ** 2).mean(-1, keepdims=True) + scale.eps)
        ctx.save_for_backward((x - mu) * rstd, rstd, scale.gamma)
        ctx.scale = scale

    @staticmethod
    def backward(ctx: Any, g: jax.Array) -> tuple[Scale, jax.Array]:
        xhat, rstd, gamma = ctx.saved_tensors
        n = xhat.shape[-1]
        gxhat = g * gamma
        gx = rstd / n * (n * gxhat - gxhat.sum(-1, keepdims=True) - xhat * (gxhat * xhat).sum(-1, keepdims=True))
        flat = (-1, n)
        gscale = Scale((g * xhat).reshape(flat).sum(0), g.reshape(flat).sum(0), ctx.scale.eps)
        return gscale, gx


# ------------------------------------------------------------------ the model
class Dense(eqx.Module):
    """A dense layer whose matmul is the ``eqxdemo::dense`` op."""

    w: jax.Array
    b: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return dense(x, self.w, self.b)


class Model(eqx.Module):
    """``dense → norm → relu → dense``: a small classifier built from jaxops ops."""

    l1: Dense
    norm: Scale
    l2: Dense
    activation: str = eqx.field(static=True, default="host")

    def __call__(self, x: jax.Array) -> jax.Array:
        with jax.named_scope("l1"):
            h = self.l1(x)
        with jax.named_scope("norm"):
            h = Norm.apply(self.norm, h)
        with jax.named_scope("act"):
            h = relu(h) if self.activation == "host" else jax.nn.relu(h)
        with jax.named_scope("l2"):
            return self.l2(h)


def make_model(key: jax.Array, d_in: int = 8, d_hidden: int = 32, n_out: int = 4, activation: str = "host") -> Model:
    """A randomly initialised :class:`Model`."""
    k1, k2 = jax.random.split(key)
    return Model(
        Dense(jax.random.normal(k1, (d_in, d_hidden)) / np.sqrt(d_in), jnp.zeros((d_hidden,))),
        Scale(jnp.ones((d_hidden,)), jnp.zeros((d_hidden,))),
        Dense(jax.random.normal(k2, (d_hidden, n_out)) / np.sqrt(d_hidden), jnp.zeros((n_out,))),
        activation,
    )


# ------------------------------------------------------------ the plain twin
class PlainDense(eqx.Module):
    w: jax.Array
    b: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.w + self.b


class PlainModel(eqx.Module):
    """The same model in plain JAX (JAX differentiates everything itself)."""

    l1: PlainDense
    norm: Scale
    l2: PlainDense

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.l1(x)
        mu = h.mean(-1, keepdims=True)
        rstd = jax.lax.rsqrt(((h - mu) ** 2).mean(-1, keepdims=True) + self.norm.eps)
        h = (h - mu) * rstd * self.norm.gamma + self.norm.beta
        return self.l2(jax.nn.relu(h))


def twin(model: Model) -> PlainModel:
    """``model``'s parameters in :class:`PlainModel`."""
    return PlainModel(PlainDense(model.l1.w, model.l1.b), model.norm, PlainDense(model.l2.w, model.l2.b))


def loss_fn(model: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of ``model(x)`` against integer labels ``y``."""
    logp = jax.nn.log_softmax(model(x), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def make_data(key: jax.Array, n: int = 256, d_in: int = 8, n_out: int = 4) -> tuple[jax.Array, jax.Array]:
    """A learnable toy problem: labels are the argmax of a fixed random projection."""
    kx, kp = jax.random.split(key)
    x = jax.random.normal(kx, (n, d_in))
    y = jnp.argmax(x @ jax.random.normal(kp, (d_in, n_out)), axis=-1)
    return x, y


def make_step(optimizer: Any) -> Any:
    """A jitted Optax training step ``step(model, opt_state, x, y) -> (model, opt_state, loss)``."""

    @eqx.filter_jit
    def step(model: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        return model, opt_state, loss

    return step
