"""Per-device kernels and how one is chosen.

An op keeps a small table of kernels keyed by platform (``"cpu"``, ``"cuda"``,
``"rocm"``, ``"tpu"``) plus an optional ``"default"`` kernel.  Under tracing the
choice is made at lowering time with :func:`jax.lax.platform_dependent`, so it
costs nothing at run time; eagerly the platform of the inputs decides.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.extend.core
from jax.interpreters import mlir

_ALIASES = {
    "cpu": ("cpu",),
    "gpu": ("cuda", "rocm"),
    "cuda": ("cuda",),
    "rocm": ("rocm",),
    "tpu": ("tpu",),
}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One registered implementation of an op."""

    fn: Callable[..., Any]
    host: bool
    where: str  # "file.py:LINE" of the registration, for messages

    @property
    def label(self) -> str:
        return "host" if self.host else "traceable"


def bind_to_op(op: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    """The callable to store as ``op``'s kernel for ``fn``: ``fn.__jaxops_bind__(op)`` if it has one.

    The one hook for kernel objects that need their op, e.g. ``jaxops.ffi.kernel``
    (it reads the op's schema and fake); plain functions are stored as they are.

    >>> bind_to_op(None, len) is len
    True
    """
    bind = getattr(type(fn), "__jaxops_bind__", None)
    return fn if bind is None else bind(fn, op)


def source_location(fn: Callable[..., Any]) -> str:
    """``file.py:LINE`` where ``fn`` was defined (best effort)."""
    try:
        target = inspect.unwrap(fn)
        file = inspect.getsourcefile(target) or inspect.getfile(target)
        line = inspect.getsourcelines(target)[1]
        return f"{file}:{line}"
    except (TypeError, OSError):
        return getattr(fn, "__qualname__", repr(fn))


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: Modules whose frames are registration plumbing, never the user's line.
_PLUMBING = frozenset(
    os.path.join(_PACKAGE_DIR, f"{m}.py")
    for m in ("op", "definition", "library", "registry", "dispatch", "fake", "autograd", "vmap", "sharding", "annotations", "legacy")
)


def caller_location(depth: int = 2) -> str:
    """``file.py:LINE`` of the user's frame that made a registration.

    Starts ``depth`` levels above the caller and keeps walking out of jaxops'
    registration plumbing, so the functional forms (``jaxops.register_fake(op, fn)``,
    ``Library.impl``) report the user's line, not jaxops'.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(depth):
            if frame is None or frame.f_back is None:
                break
            frame = frame.f_back
        while frame is not None and frame.f_back is not None and frame.f_code.co_filename in _PLUMBING:
            frame = frame.f_back
        if frame is None:
            return "<unknown>"
        return f"{frame.f_code.co_filename}:{frame.f_lineno}"
    finally:
        del frame


def check_callable(op_name: str, verb: str, what: str, fn: Any) -> None:
    """Refuse a non-callable registration at the call that makes it (nothing is stored).

    >>> check_callable("mylib::f", "register_kernel", "kernel", len)
    """
    if not callable(fn):
        raise TypeError(f"{op_name}: {verb} expects a callable {what}, got {type(fn).__name__} ({fn!r:.60})")


def normalize_device_types(op_name: str, device_types: str | Iterable[str] | None) -> tuple[str, ...]:
    """Map user spellings (``"gpu"``, ``["cpu", "cuda"]``, ``None``) to platform keys.

    >>> normalize_device_types("mylib::foo", "gpu")
    ('cuda', 'rocm')
    """
    if device_types is None:
        return ("default",)
    if isinstance(device_types, str):
        items: Sequence[Any] = (device_types,)
    elif isinstance(device_types, Iterable):
        items = tuple(device_types)
    else:
        items = (device_types,)
    keys: list[str] = []
    for item in items:
        if not isinstance(item, str) or item.lower() not in _ALIASES:
            raise ValueError(
                f"{op_name}: unknown device type {item!r} in device_types; expected one of "
                f"'cpu', 'gpu' (or 'cuda', 'rocm'), 'tpu', a sequence of these, or None (every device)"
            )
        for key in _ALIASES[item.lower()]:
            if key not in keys:
                keys.append(key)
    if not keys:
        raise ValueError(f"{op_name}: device_types is empty; give at least one device type or None")
    return tuple(keys)


def display_keys(keys: Iterable[str]) -> list[str]:
    """Platform keys as a user spells them: ``"cuda"`` and ``"rocm"`` together read ``"gpu"``.

    ``register_kernel("gpu")`` stores the kernel under both GPU keys; messages echo
    the ``"gpu"`` the user wrote, and ``"cuda"`` alone for a ``register_kernel("cuda")``.

    >>> display_keys(["cpu", "cuda", "rocm"]), display_keys(["cuda"])
    (['cpu', 'gpu'], ['cuda'])
    """
    keys = list(dict.fromkeys(keys))
    out: list[str] = []
    for key in keys:
        if key in ("cuda", "rocm") and "cuda" in keys and "rocm" in keys:
            if "gpu" not in out:
                out.append("gpu")
        else:
            out.append(key)
    return out


def display_platform(platform: str, keys: Iterable[str]) -> str:
    """How a message names ``platform`` for an op whose kernels are under ``keys``.

    A GPU platform reads ``"gpu"`` (what ``register_kernel`` takes), unless a kernel
    for the other GPU flavour exists, when only the exact key (``"cuda"``) would help.

    >>> display_platform("cuda", ["cpu"]), display_platform("cuda", ["rocm"])
    ('gpu', 'cuda')
    """
    if platform in ("cuda", "rocm") and not ({"cuda", "rocm"} - {platform}) & set(keys):
        return "gpu"
    return platform


def no_kernel_message(op_name: str, platform: str, keys: Sequence[str]) -> str:
    """The error text for an op with no kernel for ``platform`` (one text, eager and under jit).

    >>> no_kernel_message("lib::f", "cuda", ["cpu"])
    "lib::f: no kernel for device type 'gpu' (registered: cpu); register one with f.register_kernel('gpu')"
    """
    shown = display_platform(platform, keys)
    have = ", ".join(display_keys(keys)) or "none"
    return (
        f"{op_name}: no kernel for device type '{shown}' (registered: {have}); "
        f"register one with {op_name.split('::')[-1]}.register_kernel('{shown}')"
    )


def platform_of_device(device: Any) -> str:
    """Platform key (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``) of a device or device string."""
    if isinstance(device, str):
        name = device.split(":")[0].lower()
        if name == "gpu":
            return _gpu_flavour()
        if name not in ("cpu", "cuda", "rocm", "tpu"):
            raise ValueError(f"unknown device {device!r}")
        return name
    platform = getattr(device, "platform", "cpu")
    if platform == "gpu":
        return _gpu_flavour(device)
    return platform


def _gpu_flavour(device: Any = None) -> str:
    try:
        dev = device if device is not None else jax.devices("gpu")[0]
        version = str(getattr(dev.client, "platform_version", "")).lower()
    except Exception:  # noqa: BLE001 - no GPU backend: any answer is fine
        return "cuda"
    return "rocm" if "rocm" in version else "cuda"


def resolve_device(op_name: str, device: Any) -> jax.Device:
    """A ``jax.Device`` from a device argument (``"cpu"``, ``"gpu:1"``, a Device)."""
    if isinstance(device, jax.Device):
        return device
    if isinstance(device, str):
        name, _, index = device.partition(":")
        name = {"cuda": "gpu", "rocm": "gpu"}.get(name.lower(), name.lower())
        try:
            devices = jax.devices(name)
        except RuntimeError as e:
            raise RuntimeError(f"{op_name}: device {device!r} is not available here: {e}") from None
        idx = int(index) if index else 0
        if idx >= len(devices):
            raise RuntimeError(f"{op_name}: device {device!r} is not available ({len(devices)} {name} devices)")
        return devices[idx]
    raise TypeError(f"{op_name}: expected a jax.Device or a device string like 'cpu', got {type(device).__name__}")


def platform_of_leaves(leaves: Sequence[Any]) -> str:
    """Platform key of the first committed ``jax.Array`` among ``leaves`` (else the default device's)."""
    for v in leaves:
        if isinstance(v, jax.Array):
            try:
                devs = v.devices()
            except Exception:  # noqa: BLE001 - deleted/donated arrays: fall back to default
                continue
            for d in devs:
                return platform_of_device(d)
    return platform_of_device(jax.devices()[0])


def device_of_leaves(leaves: Sequence[Any]) -> Any:
    """The single device of the first single-device ``jax.Array`` among ``leaves``, or None."""
    for v in leaves:
        if isinstance(v, jax.Array):
            try:
                devs = list(v.devices())
            except Exception:  # noqa: BLE001
                continue
            if len(devs) == 1:
                return devs[0]
    return None


class KernelTable:
    """Kernels of one op, keyed by platform or ``"default"``."""

    def __init__(self) -> None:
        self._kernels: dict[str, Kernel] = {}
        self._disabled: frozenset[str] = frozenset()

    @property
    def disabled(self) -> frozenset[str]:
        """Platform keys whose kernels are disabled (``CustomOp.set_kernel_enabled``): the default runs."""
        return self._disabled

    def set_disabled(self, keys: Iterable[str]) -> None:
        self._disabled = frozenset(keys)

    def _active(self) -> dict[str, Kernel]:
        if not self._disabled:
            return self._kernels
        return {k: v for k, v in self._kernels.items() if k == "default" or k not in self._disabled}

    def set(self, keys: Iterable[str], kernel: Kernel) -> None:
        for key in keys:
            self._kernels[key] = kernel

    def clear(self) -> None:
        self._kernels.clear()

    def remove_where(self, pred: Callable[[Kernel], bool]) -> None:
        self._kernels = {k: v for k, v in self._kernels.items() if not pred(v)}

    def items(self) -> list[tuple[str, Kernel]]:
        return list(self._kernels.items())

    def __bool__(self) -> bool:
        return bool(self._kernels)

    def display_items(self) -> list[tuple[str, Kernel]]:
        """``items()`` keyed as the user spells them: one ``"gpu"`` for a kernel on both GPU keys.

        >>> t = KernelTable(); t.set(("cuda", "rocm"), Kernel(abs, False, "")); t.set(("cpu",), Kernel(abs, True, ""))
        >>> [(k, v.label) for k, v in t.display_items()]
        [('gpu', 'traceable'), ('cpu', 'host')]
        """
        cuda, rocm = self._kernels.get("cuda"), self._kernels.get("rocm")
        shared = cuda is not None and cuda is rocm
        out: list[tuple[str, Kernel]] = []
        for key, kernel in self._kernels.items():
            if shared and key in ("cuda", "rocm"):
                if key == "cuda" or "cuda" not in self._kernels:
                    out.append(("gpu", kernel))
                continue
            out.append((key, kernel))
        return out

    def for_platform(self, platform: str) -> Kernel | None:
        """The kernel that runs on ``platform``: a platform kernel wins over the default."""
        active = self._active()
        return active.get(platform) or active.get("default")

    @property
    def any_host(self) -> bool:
        return any(k.host for k in self._kernels.values())

    def distinct(self) -> list[Kernel]:
        seen: list[Kernel] = []
        for k in self._active().values():
            if all(k is not s for s in seen):
                seen.append(k)
        return seen

    def select_traced(
        self, op_name: str, run: Callable[[Kernel, tuple[Any, ...]], Any], operands: tuple[Any, ...]
    ) -> Any:
        """Run the right kernel for the platform the computation is lowered for.

        ``run(kernel, operands)`` calls one kernel.  With a single kernel there is
        no branch at all; otherwise :func:`jax.lax.platform_dependent` picks the
        branch at lowering time (zero run-time cost).
        """
        distinct = self.distinct()
        if not distinct:
            raise RuntimeError(
                f"{op_name}: no kernel is registered; use @{op_name.split('::')[-1]}.register_kernel(...) "
                "or jaxops.impl(...) to add one"
            )
        active = self._active()
        if len(distinct) == 1 and "default" in active:
            return run(distinct[0], operands)
        branches: dict[str, Callable[..., Any]] = {}
        for key, kernel in active.items():
            branches[key] = _bind_branch(run, kernel)
        branches = _defer_untraceable_host_branches(op_name, active, branches, operands)
        default = branches.pop("default", None)
        if default is None:
            default = _missing_kernel_branch(op_name, branches, operands, tuple(active))
        return jax.lax.platform_dependent(*operands, default=default, **branches)


def _defer_untraceable_host_branches(
    op_name: str,
    kernels: dict[str, Kernel],
    branches: dict[str, Callable[..., Any]],
    operands: tuple[Any, ...],
) -> dict[str, Callable[..., Any]]:
    """Host branches that cannot be traced (no fake) raise only if their platform is lowered.

    ``platform_dependent`` traces every branch, but lowers only the platforms the
    computation is compiled for: an op with a traceable default kernel and a CPU
    host kernel without a fake still runs on a GPU. A host branch whose tracing
    raises ``RuntimeError`` becomes a branch whose *lowering* raises that error,
    with the shapes of a traceable branch. Without a traceable branch nothing is
    deferred (the error surfaces while tracing, as before).
    """
    traceable = [key for key, kernel in kernels.items() if not kernel.host]
    host = [key for key, kernel in kernels.items() if kernel.host]
    if not traceable or not host:
        return branches
    failed: dict[str, str] = {}
    for key in host:
        try:
            jax.eval_shape(branches[key], *operands)
        except RuntimeError as e:
            failed[key] = str(e)
    if not failed:
        return branches
    out_shapes = jax.eval_shape(branches[traceable[0]], *operands)
    leaves, treedef = jax.tree_util.tree_flatten(out_shapes)
    avals = tuple(jax.core.ShapedArray(o.shape, o.dtype) for o in leaves)
    fixed = dict(branches)
    for key, message in failed.items():
        shown = "gpu" if key in ("cuda", "rocm") and "gpu" in display_keys(kernels) else key
        where = "every device without its own kernel" if key == "default" else f"device type '{shown}'"
        text = f"{message} (the host kernel for {where} is needed by this computation)"

        def branch(*_operands: Any, _text: str = text) -> Any:
            outs = _deferred_error_p.bind(avals=avals, message=_text)
            return jax.tree_util.tree_unflatten(treedef, list(outs))

        fixed[key] = branch
    return fixed


def _missing_kernel_branch(
    op_name: str, branches: dict[str, Callable[..., Any]], operands: tuple[Any, ...], have: tuple[str, ...]
) -> Callable[..., Any]:
    """The branch for platforms with no kernel: lowering it raises an error naming the op.

    Only a platform the computation is actually lowered for reaches it, so a
    GPU-only op still traces (and exports for ``"cuda"``) on a CPU host. The
    output shapes come from a registered branch; when none can be traced (a host
    kernel without a fake) and JAX's default platform has no kernel either, the
    error names both problems, since the platform is not known while tracing.
    """
    errors: list[str] = []
    for candidate in branches.values():
        try:
            out_shapes = jax.eval_shape(candidate, *operands)
            break
        except RuntimeError as e:
            errors.append(str(e))
    else:
        default_platform = platform_of_device(jax.devices()[0])
        if default_platform in have:
            raise RuntimeError(errors[0])
        raise RuntimeError(f"{no_kernel_message(op_name, default_platform, have)}; and {errors[0]}")
    leaves, treedef = jax.tree_util.tree_flatten(out_shapes)

    def branch(*_operands: Any) -> Any:
        outs = _no_kernel_p.bind(
            avals=tuple(jax.core.ShapedArray(o.shape, o.dtype) for o in leaves), op_name=op_name, have=have
        )
        return jax.tree_util.tree_unflatten(treedef, list(outs))

    return branch


def _no_kernel_lowering(ctx: Any, *, avals: Any, op_name: str, have: tuple[str, ...]) -> Any:
    missing = [p for p in ctx.module_context.platforms if p not in have] or list(ctx.module_context.platforms)
    raise RuntimeError(no_kernel_message(op_name, missing[0], have))


def _deferred_error_lowering(ctx: Any, *, avals: Any, message: str) -> Any:
    raise RuntimeError(message)


_no_kernel_p = jax.extend.core.Primitive("jaxops_no_kernel")
_no_kernel_p.multiple_results = True
_no_kernel_p.def_abstract_eval(lambda *, avals, op_name, have: list(avals))
mlir.register_lowering(_no_kernel_p, _no_kernel_lowering)

_deferred_error_p = jax.extend.core.Primitive("jaxops_deferred_error")
_deferred_error_p.multiple_results = True
_deferred_error_p.def_abstract_eval(lambda *, avals, message: list(avals))
mlir.register_lowering(_deferred_error_p, _deferred_error_lowering)


def _bind_branch(run: Callable[[Kernel, tuple[Any, ...]], Any], kernel: Kernel) -> Callable[..., Any]:
    def branch(*operands: Any) -> Any:
        return run(kernel, operands)

    return branch


__all__ = [
    "Kernel",
    "KernelTable",
    "caller_location",
    "device_of_leaves",
    "normalize_device_types",
    "platform_of_device",
    "platform_of_leaves",
    "resolve_device",
    "source_location",
]
