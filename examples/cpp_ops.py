"""Ops with C++ kernels through XLA's FFI, built from a string (``jaxops.ffi.load_inline``).

* ``cpp_ops::softmax`` (row-wise softmax over the last axis) and
  ``cpp_ops::softmax_backward``: both run C++ handlers; ``softmax``'s
  ``register_autograd`` backward calls ``softmax_backward``, so ``jax.grad``
  runs C++ in both directions.  ``jnp`` reference bodies stay as the default
  kernels (other devices, and ``set_kernel_enabled("cpu", False)``).
* ``cpp_ops::identity``: the port of PyTorch's test "C++ op backed by an
  autograd function": a C++ forward that copies its input and a C++ backward
  that passes the gradient through, so the gradient of ``op(x).sum()`` is ones.

:func:`build` compiles (once; the build is cached on disk) and registers the
kernels; call it before using the ops' C++ kernels.

>>> from examples import cpp_ops              # doctest: +SKIP
>>> cpp_ops.build()                           # doctest: +SKIP
>>> cpp_ops.softmax(jnp.ones((2, 3)))         # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import jaxops
import jaxops.ffi

#: The C++ source: three handlers (XLA FFI), f32 arrays of any rank, rows = last axis.
CPP_SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstring>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Rows of length n (the last dimension); a 0-d array is one row of length 1.
static void Rows(const ffi::Buffer<ffi::F32>& x, int64_t* rows, int64_t* n) {
  auto dims = x.dimensions();
  *n = dims.size() == 0 ? 1 : dims.back();
  *rows = *n == 0 ? 0 : static_cast<int64_t>(x.element_count()) / *n;
}

static ffi::Error SoftmaxForward(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  int64_t rows, n;
  Rows(x, &rows, &n);
  const float* in = x.typed_data();
  float* out = y->typed_data();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = in + r * n;
    float* yr = out + r * n;
    float peak = xr[0];
    for (int64_t j = 1; j < n; ++j) peak = std::max(peak, xr[j]);
    float total = 0.f;
    for (int64_t j = 0; j < n; ++j) {
      yr[j] = std::exp(xr[j] - peak);
      total += yr[j];
    }
    const float inv = 1.f / total;
    for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
  }
  return ffi::Error::Success();
}

// dx = y * (g - sum(g * y)) per row.
static ffi::Error SoftmaxBackward(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> y,
                                  ffi::ResultBuffer<ffi::F32> dx) {
  if (g.element_count() != y.element_count()) {
    return ffi::Error::InvalidArgument("softmax_backward: g and y differ in size");
  }
  int64_t rows, n;
  Rows(y, &rows, &n);
  const float* gp = g.typed_data();
  const float* yp = y.typed_data();
  float* out = dx->typed_data();
  for (int64_t r = 0; r < rows; ++r) {
    float dot = 0.f;
    for (int64_t j = 0; j < n; ++j) dot += gp[r * n + j] * yp[r * n + j];
    for (int64_t j = 0; j < n; ++j) out[r * n + j] = yp[r * n + j] * (gp[r * n + j] - dot);
  }
  return ffi::Error::Success();
}

// Forward of the ported PyTorch test: y = x (a copy); its backward is the same handler.
static ffi::Error Identity(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  std::memcpy(y->typed_data(), x.typed_data(), x.size_bytes());
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(cpp_ops_softmax_fwd, SoftmaxForward,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cpp_ops_softmax_bwd, SoftmaxBackward,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cpp_ops_identity, Identity,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
"""

FUNCTIONS = ("cpp_ops_softmax_fwd", "cpp_ops_softmax_bwd", "cpp_ops_identity")


# ------------------------------------------------------------------ the ops
@jaxops.custom_op("cpp_ops::softmax", mutates_args=())
def softmax(x: jax.Array) -> jax.Array:
    """Row-wise softmax over the last axis (reference body; the CPU kernel is C++)."""
    return jax.nn.softmax(x, axis=-1)


@softmax.register_fake
def _softmax_fake(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


@jaxops.custom_op("cpp_ops::softmax_backward", mutates_args=())
def softmax_backward(g: jax.Array, y: jax.Array) -> jax.Array:
    """``y * (g - sum(g * y, -1))``: the softmax VJP (reference body; the CPU kernel is C++)."""
    return y * (g - jnp.sum(g * y, axis=-1, keepdims=True))


@softmax_backward.register_fake
def _softmax_backward_fake(g: Any, y: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(y.shape, y.dtype)


def _softmax_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    ctx.save_for_backward(output)


def _softmax_bwd(ctx: Any, g: jax.Array) -> jax.Array:
    (y,) = ctx.saved_tensors
    return softmax_backward(g, y)


softmax.register_autograd(_softmax_bwd, setup_context=_softmax_setup)


@jaxops.custom_op("cpp_ops::identity", mutates_args=())
def identity(x: jax.Array) -> jax.Array:
    """PyTorch's "C++ op backed by an autograd function": forward copies, backward passes through."""
    return x


@identity.register_fake
def _identity_fake(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


@jaxops.custom_op("cpp_ops::identity_backward", mutates_args=())
def identity_backward(g: jax.Array) -> jax.Array:
    """The backward of :func:`identity`: returns ``g`` (the CPU kernel is the same C++ copy)."""
    return g


@identity_backward.register_fake
def _identity_backward_fake(g: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(g.shape, g.dtype)


identity.register_autograd(lambda ctx, g: identity_backward(g))


def build(*, vmap_method: str = "broadcast_all") -> jaxops.ffi.Module:
    """Compile (cached) the C++ handlers and register them as the ops' CPU kernels.

    The handlers treat every leading axis as rows, so ``vmap`` may hand them the
    whole batch at once (``vmap_method="broadcast_all"``).

    >>> mod = build()                      # doctest: +SKIP
    >>> sorted(mod.targets)                # doctest: +SKIP
    ['cpp_ops_identity', 'cpp_ops_softmax_bwd', 'cpp_ops_softmax_fwd']
    """
    mod = jaxops.ffi.load_inline("cpp_ops", CPP_SOURCE, functions=FUNCTIONS)
    softmax.register_kernel("cpu", mod.kernel("cpp_ops_softmax_fwd", vmap_method=vmap_method))
    softmax_backward.register_kernel("cpu", mod.kernel("cpp_ops_softmax_bwd", vmap_method=vmap_method))
    identity.register_kernel("cpu", mod.kernel("cpp_ops_identity", vmap_method=vmap_method))
    identity_backward.register_kernel("cpu", mod.kernel("cpp_ops_identity", vmap_method=vmap_method))
    return mod


if __name__ == "__main__":
    module = build()
    x = jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3)
    print("built" if module.built else "from cache", module.build_dir)
    print("softmax:", softmax(x))
    print("grad:", jax.grad(lambda v: (softmax(v) * jnp.arange(3.0)).sum())(x))
    print("identity grad:", jax.grad(lambda v: identity(v).sum())(jnp.ones((2, 2))))
