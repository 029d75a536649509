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

#: The C++ source: three handlers (XLA FFI); float32/float64 arrays of any rank, rows = last axis.
CPP_SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstring>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Rows of length n (the last dimension); a 0-d array is one row of length 1.
static void Rows(const ffi::AnyBuffer& x, int64_t* rows, int64_t* n) {
  auto dims = x.dimensions();
  *n = dims.size() == 0 ? 1 : dims.back();
  *rows = *n == 0 ? 0 : static_cast<int64_t>(x.element_count()) / *n;
}

template <typename T>
static void SoftmaxRows(const T* in, T* out, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = in + r * n;
    T* yr = out + r * n;
    T peak = xr[0];
    for (int64_t j = 1; j < n; ++j) peak = std::max(peak, xr[j]);
    T total = 0;
    for (int64_t j = 0; j < n; ++j) {
      yr[j] = std::exp(xr[j] - peak);
      total += yr[j];
    }
    const T inv = T(1) / total;
    for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
  }
}

// dx = y * (g - sum(g * y)) per row.
template <typename T>
static void SoftmaxBackwardRows(const T* g, const T* y, T* dx, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    T dot = 0;
    for (int64_t j = 0; j < n; ++j) dot += g[r * n + j] * y[r * n + j];
    for (int64_t j = 0; j < n; ++j) dx[r * n + j] = y[r * n + j] * (g[r * n + j] - dot);
  }
}

// float32 and float64 (opcheck's gradient check runs in float64).
static ffi::Error SoftmaxForward(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  int64_t rows, n;
  Rows(x, &rows, &n);
  switch (x.element_type()) {
    case ffi::F32:
      SoftmaxRows(x.typed_data<float>(), y->typed_data<float>(), rows, n);
      return ffi::Error::Success();
    case ffi::F64:
      SoftmaxRows(x.typed_data<double>(), y->typed_data<double>(), rows, n);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("cpp_ops softmax: only float32 and float64 arrays");
  }
}

static ffi::Error SoftmaxBackward(ffi::AnyBuffer g, ffi::AnyBuffer y, ffi::Result<ffi::AnyBuffer> dx) {
  if (g.element_count() != y.element_count() || g.element_type() != y.element_type()) {
    return ffi::Error::InvalidArgument("cpp_ops softmax_backward: g and y differ in size or dtype");
  }
  int64_t rows, n;
  Rows(y, &rows, &n);
  switch (y.element_type()) {
    case ffi::F32:
      SoftmaxBackwardRows(g.typed_data<float>(), y.typed_data<float>(), dx->typed_data<float>(), rows, n);
      return ffi::Error::Success();
    case ffi::F64:
      SoftmaxBackwardRows(g.typed_data<double>(), y.typed_data<double>(), dx->typed_data<double>(), rows, n);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("cpp_ops softmax_backward: only float32 and float64 arrays");
  }
}

// Forward of the ported PyTorch test: y = x (a copy, any dtype); its backward is the same handler.
static ffi::Error Identity(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(cpp_ops_softmax_fwd, SoftmaxForward,
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cpp_ops_softmax_bwd, SoftmaxBackward,
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(cpp_ops_identity, Identity,
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
"""

FUNCTIONS = ("cpp_ops_softmax_fwd", "cpp_ops_softmax_bwd", "cpp_ops_identity")

#: Extra compiler flags.  ``-ffast-math`` lets GCC call glibc's vectorized ``expf`` and
#: ``-march=native`` use this CPU's vector width: about 10x faster on a 1024x1024 input
#: than plain ``-O3`` (bench/ffi_ops.py).  A ``=native`` flag also puts the CPU model in
#: the build's cache key, so a cache shared between machines never serves a foreign build.
CFLAGS = ("-ffast-math", "-march=native")


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
    mod = jaxops.ffi.load_inline("cpp_ops", CPP_SOURCE, functions=FUNCTIONS, extra_cflags=CFLAGS)
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
