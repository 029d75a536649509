"""Host (``host=True``) kernels: bodies that are not JAX-traceable.

A host kernel receives NumPy arrays and returns NumPy arrays or numbers.

* Eagerly, on concrete arrays, it is called directly (no callback round trip).
* Under tracing it runs through :func:`jax.pure_callback`; the result shapes come
  from the op's fake.  Under ``jax.shard_map`` the callback runs on each device's
  local block, so its results vary over the mesh axes its inputs vary over
  (:func:`callback_results`); ``pure_callback`` alone would type them as
  replicated, and gradients through them would be summed over the mesh.

An exception raised inside the kernel surfaces as a Python exception that names
the op, eagerly and under ``jit`` (where JAX re-raises it as a ``RuntimeError``
subclass carrying our message); the process stays usable.
"""

from __future__ import annotations

import _thread
import functools
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import callback as _jax_callback

from custom_vjp.rules import vary_to, vma_of


class HostKernelError(RuntimeError):
    """A host kernel raised; the message names the op and the original error."""


def _describe(op_name: str, exc: BaseException, what: str = "the host kernel") -> str:
    return f"{op_name}: {what} raised {type(exc).__name__}: {exc}"


def reraise_naming_op(
    op_name: str, exc: Exception, what: str = "the host kernel", fallback: type[Exception] = HostKernelError
) -> None:
    """Re-raise ``exc`` with the op's name in its message, keeping its type when possible.

    ``what`` says which registration raised (``"the fake (register_fake)"``...).  JAX's
    own errors (tracer conversions, which the call pipeline reacts to) and errors that
    already name the op pass through unchanged.

    >>> try:
    ...     reraise_naming_op("mylib::f", ValueError("bad x"), "the kernel")
    ... except ValueError as e:
    ...     print(e)
    mylib::f: the kernel raised ValueError: bad x
    """
    if op_name in str(exc) or type(exc).__module__.split(".")[0] in ("jax", "jaxlib"):
        raise exc
    message = _describe(op_name, exc, what)
    try:
        new = type(exc)(message)
    except Exception:  # noqa: BLE001 - exotic constructor: fall back to our own type
        new = fallback(message)
    if getattr(new, "args", None) != (message,):
        new = fallback(message)
    raise new.with_traceback(exc.__traceback__) from exc


def to_numpy(x: Any) -> Any:
    """A NumPy view of an array leaf (read-only for JAX arrays); None stays None."""
    if x is None:
        return None
    return np.asarray(x)


def prefetch_to_host(leaves: Sequence[Any]) -> None:
    """Start the device-to-host copies of an eager host call's accelerator inputs together.

    ``np.asarray`` on a GPU array waits for its own copy (about 0.2 ms on an H200 for
    a small array, bench/RESULTS.md); started together, several inputs' copies overlap
    instead of queueing one after the other. One input (or CPU arrays) needs nothing.

    >>> prefetch_to_host([np.zeros(2), None])   # no jax.Array on an accelerator: a no-op
    """
    pending = []
    for v in leaves:
        if isinstance(v, jax.Array) and getattr(v, "_npy_value", None) is None:
            try:
                if any(d.platform != "cpu" for d in v.devices()):
                    pending.append(v)
            except Exception:  # noqa: BLE001 - a deleted array: its conversion reports it
                continue
    if len(pending) > 1:
        for v in pending:
            v.copy_to_host_async()
def readonly(x: Any) -> Any:
    """A read-only NumPy view of an array leaf (what a host kernel gets for an input it must not write)."""
    a = np.asarray(x)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def check_no_alias(op_name: str, out: Any, inputs: Any, advice: str = "return a copy, e.g. x.copy()") -> None:
    """``RuntimeError`` when a NumPy output of a host kernel shares memory with a NumPy input."""
    ins = [a for a in jax.tree_util.tree_leaves(inputs) if isinstance(a, np.ndarray)]
    if not ins:
        return
    for o in jax.tree_util.tree_leaves(out):
        if isinstance(o, np.ndarray) and any(np.may_share_memory(o, i) and np.shares_memory(o, i) for i in ins):
            raise RuntimeError(
                f"{op_name}: an output of the kernel aliases an input; outputs may not alias "
                f"inputs ({advice})"
            )


@functools.lru_cache(maxsize=1)
def _default_device_cached(_backend: str) -> Any:
    return jax.devices()[0]


def _default_device() -> Any:
    """Where ``jnp.asarray`` puts arrays; None when a default device is configured."""
    if jax.config.jax_default_device is not None:
        return None
    return _default_device_cached(jax.default_backend())


def place_outputs(out: Any, device: Any) -> Any:
    """A host kernel's eager NumPy outputs as JAX arrays on ``device`` (None: the default device).

    ``jnp.asarray`` places on the default device and costs about half of
    ``jax.device_put(v, device)``; the latter is used only for another device.
    """
    default = _default_device()
    if (device is None and default is not None) or (device is not None and device == default):

        def leaf(v: Any) -> Any:
            return jnp.asarray(v) if isinstance(v, (np.ndarray, np.generic)) else v

    else:

        def leaf(v: Any) -> Any:
            return jax.device_put(v, device) if isinstance(v, (np.ndarray, np.generic)) else v

    if isinstance(out, np.ndarray):
        return leaf(out)
    return jax.tree_util.tree_map(leaf, out)


def call_kernel_eager(
    op_name: str, kernel: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call a host kernel on concrete inputs, naming the op if it raises."""
    try:
        return kernel(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the op's name
        reraise_naming_op(op_name, e)


def callback_results(out: Any, inputs: Sequence[Any]) -> Any:
    """``pure_callback`` results typed to vary over every mesh axis an input varies over.

    >>> callback_results([np.ones(2)], [np.zeros(2)])[0].shape   # outside shard_map: unchanged
    (2,)
    """
    vma = frozenset().union(*(vma_of(x) for x in inputs))
    if not vma:
        return out
    return jax.tree_util.tree_map(lambda leaf: vary_to(leaf, vma), out)


def conform_outputs(
    op_name: str, out: Any, expected: list[Any], *, batched: bool = False
) -> tuple[list[np.ndarray], Any]:
    """Check a host kernel's outputs against the fake's avals; NumPy leaves of the expected dtypes.

    Symbolic (data-dependent) dims of the fake match any size.  With ``batched``
    the kernel may return extra leading batch dims: only the trailing dims are
    compared.  Raises :class:`HostKernelError` naming the op on a mismatch.
    """
    leaves, treedef = jax.tree_util.tree_flatten(out)
    if len(leaves) != len(expected):
        raise HostKernelError(
            f"{op_name}: the host kernel returned {len(leaves)} arrays but the fake "
            f"(register_fake) describes {len(expected)}"
        )
    fixed = []
    for i, (leaf, exp) in enumerate(zip(leaves, expected)):
        arr = np.asarray(leaf)
        want = tuple(exp.shape)
        got = arr.shape[arr.ndim - len(want):] if batched and arr.ndim >= len(want) else arr.shape
        if len(got) != len(want) or any(
            isinstance(w, (int, np.integer)) and g != w for g, w in zip(got, want)
        ):
            raise HostKernelError(
                f"{op_name}: output {i} of the host kernel has shape {arr.shape} but the fake "
                f"(register_fake) says {want}; fix the fake or the kernel"
            )
        if _dtype_kind(arr.dtype) != _dtype_kind(exp.dtype):
            raise HostKernelError(
                f"{op_name}: output {i} of the host kernel has dtype {arr.dtype} but the fake "
                f"(register_fake) says {np.dtype(exp.dtype)}; fix the fake or the kernel"
            )
        fixed.append(arr.astype(exp.dtype, copy=False))
    return fixed, treedef


@functools.lru_cache(maxsize=256)
def _dtype_kind(dtype: Any) -> str:
    """``"bool"``, ``"int"``, ``"float"`` or ``"complex"`` (widths may differ within one kind).

    Cached per dtype: every host call checks each output with it (inside ``jit`` on every run).
    """
    for kind, family in (("bool", np.bool_), ("int", np.integer), ("float", np.floating), ("complex", np.complexfloating)):
        if jnp.issubdtype(dtype, family):
            return kind
    return str(np.dtype(dtype))
def _interrupt_caller(op_name: str) -> None:
    """Make a ``KeyboardInterrupt`` raised in a host kernel reach the caller as one.

    JAX turns any exception of a callback into a ``JaxRuntimeError``.  On the CPU
    the callback runs on the calling thread, below the Python frame that started
    the computation: a one-shot trace function on that frame replaces the
    ``JaxRuntimeError`` arriving there with ``KeyboardInterrupt`` (naming the op).
    When the callback runs on a runtime thread (accelerators), the main thread
    is interrupted instead, as Ctrl-C would.  While a tracer is installed (a
    debugger, coverage) it is left alone: the caller gets the ``JaxRuntimeError``,
    whose message names the op and ``KeyboardInterrupt``.
    """
    if threading.current_thread() is not threading.main_thread():
        _thread.interrupt_main()
        return
    if sys.gettrace() is not None:
        # A tracer (debugger, coverage) is installed; raising from a trace function
        # would uninstall it, so the caller gets the error naming the op instead.
        return
    machinery = {__file__, _jax_callback.__file__}
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in machinery:
        frame = frame.f_back
    if frame is None:
        return
    target = frame

    def local(f: Any, event: str, arg: Any) -> Any:
        if f is target and event in ("exception", "return"):
            target.f_trace = None
            sys.settrace(None)
            if event == "exception":
                raise KeyboardInterrupt(f"{op_name}: interrupted inside the host kernel")
        return local

    target.f_trace_lines = False
    target.f_trace = local
    sys.settrace(lambda f, event, arg: None)  # tracing on for this thread; no other frame is traced


def make_callback(
    op_name: str,
    body: Callable[..., Any],
    result_shapes: Any,
    vmap_method: str | None = None,
) -> Callable[..., Any]:
    """Wrap ``body`` (NumPy in, NumPy out) for :func:`jax.pure_callback`.

    The wrapper checks the kernel's outputs against the fake's shapes and dtypes
    so a wrong fake is reported by name instead of as an XLA error.  With a
    batching ``vmap_method`` (``"expand_dims"``, ``"broadcast_all"``) the kernel
    may see, and return, extra leading batch dims: only the trailing dims are checked.
    """
    expected = jax.tree_util.tree_leaves(result_shapes)
    batched = vmap_method in ("expand_dims", "broadcast_all", "legacy_vectorized")

    def callback(*args: Any) -> Any:
        # pure_callback hands over jax.Arrays; the kernel's contract is NumPy in.
        np_args = [np.asarray(a) for a in args]
        try:
            out = body(*np_args)
        except KeyboardInterrupt as e:  # Ctrl-C: the caller gets a KeyboardInterrupt naming the op
            _interrupt_caller(op_name)
            raise HostKernelError(f"{op_name}: the host kernel was interrupted (KeyboardInterrupt)") from e
        except Exception as e:  # noqa: BLE001
            raise HostKernelError(_describe(op_name, e)) from e
        leaves, treedef = conform_outputs(op_name, out, expected, batched=batched)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    return callback


def pure_callback(
    op_name: str,
    body: Callable[..., Any],
    result_shapes: Any,
    operands: Sequence[Any],
    vmap_method: str | None,
) -> Any:
    """The one ``pure_callback`` wiring: ``body(*numpy_operands)`` checked against ``result_shapes``.

    Results vary over the mesh axes the operands vary over (see :func:`callback_results`).
    """
    method = vmap_method or "sequential"
    callback = make_callback(op_name, body, result_shapes, vmap_method=method)
    out = jax.pure_callback(callback, result_shapes, *operands, vmap_method=method)
    return callback_results(out, operands)


__all__ = [
    "HostKernelError",
    "call_kernel_eager",
    "callback_results",
    "check_no_alias",
    "conform_outputs",
    "make_callback",
    "prefetch_to_host",
    "place_outputs",
    "pure_callback",
    "readonly",
    "reraise_naming_op",
    "to_numpy",
]
