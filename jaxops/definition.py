"""The definition of an op: what it *is*, never how a call runs.

An :class:`OpDefinition` holds an op's names, schema (and the binder built from
it), kernels, fake, autograd info, vmap and sharding rules, tags and definition
site.  Everything above it (the stages in ``autograd``, ``mutation``, ``vmap``,
``sharding``, ``kernels``, the pipelines in ``pipeline``, the ``CustomOp``
facade) reads these public fields and changes them only through the validated
``set_*`` verbs, each of which stores the change and *signals* it: the global
cache epoch is bumped (``registry.bump_epoch``), :attr:`OpDefinition.cache`
(per-definition caches of the layers above) is emptied and every subscriber is
told (the pipeline rebuilds its jitted callable).

>>> from jaxops.schema import parse_schema
>>> d = OpDefinition("defdoc::neg", parse_schema("(Tensor x) -> Tensor"))
>>> d.set_kernel(None, lambda x: -x, host=False, where="here")
>>> d.name, d.schema_str, [k for k, _ in d.kernels.items()]
('defdoc::neg', '(Tensor x) -> Tensor', ['default'])
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxops import dispatch, registry
from jaxops.binding import Binder, is_array
from jaxops.schema import FunctionSchema, SchemaType
from jaxops.tags import Tag, normalize_tags

RESERVED_NAMESPACES = frozenset(
    {"jax", "lax", "jnp", "numpy", "np", "aten", "prim", "prims", "jaxops", "custom_vjp", "torch", "xla"}
)
VMAP_METHODS = ("sequential", "sequential_unrolled", "expand_dims", "broadcast_all", "legacy_vectorized")


# ------------------------------------------------------------------ validation
def parse_qualname(qualname: str) -> tuple[str, str]:
    """Split ``"ns::name"``; raise ``ValueError`` for a missing ``::`` or a reserved namespace.

    >>> parse_qualname("mylib::foo")
    ('mylib', 'foo')
    """
    if not isinstance(qualname, str) or "::" not in qualname:
        raise ValueError(
            f"custom_op name {qualname!r} must be a qualified name 'namespace::opname' "
            "(the namespace is missing)"
        )
    ns, _, name = qualname.partition("::")
    if not ns or not name or "::" in name:
        raise ValueError(f"custom_op name {qualname!r} must look like 'namespace::opname'")
    if not ns.isidentifier() or not name.replace(".", "_").isidentifier():
        raise ValueError(f"custom_op name {qualname!r}: namespace and op name must be identifiers")
    if ns in RESERVED_NAMESPACES:
        raise ValueError(
            f"{qualname}: '{ns}' is a reserved namespace; choose your own namespace, e.g. 'mylib::{name}'"
        )
    return ns, name


def normalize_mutates_args(qualname: str, mutates_args: Any) -> str | frozenset[str]:
    """``mutates_args`` as a frozenset of names or ``"unknown"``."""
    if isinstance(mutates_args, str):
        if mutates_args != "unknown":
            raise ValueError(
                f"{qualname}: mutates_args must be an iterable of parameter names or the string "
                f"'unknown', got {mutates_args!r}"
            )
        return "unknown"
    try:
        return frozenset(mutates_args)
    except TypeError:
        raise ValueError(
            f"{qualname}: mutates_args must be an iterable of parameter names or 'unknown', "
            f"got {mutates_args!r}"
        ) from None


def check_vmap_method(qualname: str, vmap_method: str | None) -> str | None:
    """``vmap_method`` if it is one of ``jax.pure_callback``'s, else ``ValueError`` naming the op.

    >>> check_vmap_method("mylib::foo", "expand_dims")
    'expand_dims'
    """
    if vmap_method is not None and vmap_method not in VMAP_METHODS:
        raise ValueError(
            f"{qualname}: vmap_method must be one of 'sequential', 'sequential_unrolled', "
            f"'expand_dims', 'broadcast_all' (jax.pure_callback's values), got {vmap_method!r}"
        )
    return vmap_method


def check_kwarg_only_tensors(qualname: str, schema: FunctionSchema) -> None:
    """Keyword-only Tensor parameters must be mutated (``def f(x, *, out)`` with ``mutates_args={"out"}``).

    >>> from jaxops.schema import parse_schema
    >>> check_kwarg_only_tensors("mylib::f", parse_schema("(Tensor x, *, Tensor(a1!) out) -> ()"))
    """
    mutated = set(schema.mutated_arg_names)
    for a in schema.arguments:
        if a.kwarg_only and a.type.base == "Tensor" and a.name not in mutated:
            raise NotImplementedError(
                f"{qualname}: custom_op with kwarg-only Tensor args is not supported (parameter "
                f"'{a.name}'); make '{a.name}' a positional parameter (before the *), or list it "
                "in mutates_args"
            )


def check_schema_mutation(qualname: str, schema: FunctionSchema, mutates: str | frozenset[str]) -> None:
    """An explicit schema's mutated arguments must be ``mutates_args`` (``ValueError`` naming the op).

    >>> from jaxops.schema import parse_schema
    >>> check_schema_mutation("mylib::f", parse_schema("(Tensor(a0!) x) -> ()"), frozenset({"x"}))
    """
    declared = set(schema.mutated_arg_names)
    if mutates == "unknown":
        expected = {a.name for a in schema.arguments if a.type.base == "Tensor"}
    else:
        expected = set(mutates)
    if declared != expected:
        raise ValueError(
            f"{qualname}: the schema says the op mutates {sorted(declared) or 'nothing'}, but "
            f"mutates_args says the op mutates {sorted(expected) or 'nothing'}; make them agree"
        )


def python_parameter_names(fn: Callable[..., Any]) -> list[str] | None:
    """The names of ``fn``'s parameters (``*args``/``**kwargs`` left out); None if it has no signature.

    >>> python_parameter_names(lambda x, *rest, y=1: x)
    ['x', 'y']
    """
    try:
        return [
            n for n, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------- registrations
@dataclasses.dataclass(frozen=True)
class FakeRegistration:
    """A registered fake and where it was registered (``file.py:LINE``)."""

    fn: Callable[..., Any]
    where: str


@dataclasses.dataclass(frozen=True)
class AutogradInfo:
    """What ``register_autograd`` gave: the backward, the optional setup_context and its arity."""

    backward: Callable[..., Any]
    setup_context: Callable[..., Any] | None
    setup_arity: int
    where: str


def _arity(fn: Callable[..., Any]) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 3
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 3
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


# ------------------------------------------------------------------ the object
class OpDefinition:
    """Everything an op is: identity, schema, registrations.  Change it with ``set_*``."""

    def __init__(
        self,
        qualname: str,
        schema: FunctionSchema,
        *,
        overload: str = "",
        vmap_method: str | None = None,
        where: str = "<unknown>",
        tags: Any = (),
    ) -> None:
        self.namespace, self.opname = parse_qualname(qualname)
        self.qualname = qualname
        self.overload_name = overload or schema.overload_name
        self.name = qualname + (f".{self.overload_name}" if self.overload_name else "")
        self.function_schema = schema
        self.schema_str = str(dataclasses.replace(schema, name="", overload_name=""))
        self.binder = Binder(self.name, schema)
        params = self.binder.params
        self.mutated_args = frozenset(schema.mutated_arg_names)
        self.mutated_idx = [i for i, p in enumerate(params) if p.name in self.mutated_args]
        self.array_idx = [i for i, p in enumerate(params) if p.is_array]
        self.static_idx = [i for i, p in enumerate(params) if not p.is_array]
        self.device_idx = [i for i, p in enumerate(params) if p.type.base == "Device"]
        self.scalar_returns = any(r.type.base != "Tensor" for r in schema.returns)
        self.vmap_method = check_vmap_method(self.name, vmap_method)
        self.where = where
        self.tags: tuple[Tag, ...] = normalize_tags(self.name, tags)
        self.kernels = dispatch.KernelTable()
        self.fake: FakeRegistration | None = None
        self.derived_fake: Callable[..., Any] | None = None  # from jaxtyping annotations
        self.shape_check: Callable[[list[Any]], None] | None = None  # jaxtyping call checks
        self.py_fn: Callable[..., Any] | None = None
        self.autograd: AutogradInfo | None = None
        self.vmap_rule: Callable[..., Any] | None = None
        self.sharding_rule: str | Callable[..., str] | None = None
        #: Per-definition caches of the layers above (fake results, autograd classes):
        #: emptied by every change.
        self.cache: dict[str, Any] = {}
        self._subscribers: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"<OpDefinition {self.name}{self.schema_str}>"

    # --------------------------------------------------------------- signalling
    def subscribe(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every change of this definition (the pipeline rebuilds itself).

        >>> # definition.subscribe(pipeline.rebuild)
        """
        self._subscribers.append(fn)

    def changed(self) -> None:
        """Signal a change: bump the global epoch, drop caches, tell subscribers."""
        registry.bump_epoch(self.qualname)  # drops the traces that used this op, nothing else
        self.cache.clear()
        for fn in self._subscribers:
            fn()

    # -------------------------------------------------------------------- verbs
    def set_kernel(self, device_types: Any, fn: Callable[..., Any], *, host: bool, where: str) -> None:
        """Register ``fn`` for ``device_types``; ``None`` (every device) replaces all kernels."""
        dispatch.check_callable(self.name, "register_kernel", "kernel", fn)
        keys = dispatch.normalize_device_types(self.name, device_types)
        if keys == ("default",):
            self.kernels.clear()
        self.kernels.set(keys, dispatch.Kernel(fn, bool(host), where))
        self.changed()

    def add_kernel(self, device_types: Any, fn: Callable[..., Any], *, host: bool, where: str) -> None:
        """Like :meth:`set_kernel`, but a ``"default"`` kernel sits below platform kernels."""
        dispatch.check_callable(self.name, "register_kernel", "kernel", fn)
        keys = dispatch.normalize_device_types(self.name, device_types)
        self.kernels.set(keys, dispatch.Kernel(fn, bool(host), where))
        self.changed()

    def set_kernels_disabled(self, keys: Any) -> None:
        """Disable the platform kernels for ``keys`` (their calls fall back to the default kernel)."""
        self.kernels.set_disabled(keys)
        self.changed()

    def remove_kernel(self, fn: Callable[..., Any]) -> None:
        self.kernels.remove_where(lambda k: k.fn is fn)
        self.changed()

    def set_fake(self, fn: Callable[..., Any], where: str) -> None:
        if not callable(fn):
            raise TypeError(f"{self.name}: register_fake expects a callable, got {type(fn).__name__}")
        if self.fake is not None:
            raise RuntimeError(
                f"{self.name}: a fake (register_fake) is already registered at {self.fake.where}; "
                "an op has one fake. Redefine the op (re-run custom_op) to start over."
            )
        self.fake = FakeRegistration(fn, where)
        self.changed()

    def clear_fake(self) -> None:
        self.fake = None
        self.changed()

    def set_python_body(
        self,
        fn: Callable[..., Any],
        derived_fake: Callable[..., Any] | None,
        shape_check: Callable[[list[Any]], None] | None,
    ) -> None:
        """The Python function the op was made from and what its annotations give."""
        self.py_fn = fn
        self.derived_fake = derived_fake
        self.shape_check = shape_check
        self.changed()

    def set_autograd(self, backward: Any, setup_context: Any, where: str) -> None:
        if not callable(backward):
            raise TypeError(
                f"{self.name}: register_autograd expects a callable backward, got {type(backward).__name__}"
            )
        if setup_context is not None and not callable(setup_context):
            raise TypeError(
                f"{self.name}: register_autograd(setup_context=...) expects a callable, got "
                f"{type(setup_context).__name__}"
            )
        arity = _arity(setup_context) if setup_context is not None else 0
        if setup_context is not None and arity not in (3, 4):
            raise TypeError(
                f"{self.name}: setup_context must take (ctx, inputs, output) or "
                "(ctx, inputs, keyword_only_inputs, output)"
            )
        self.autograd = AutogradInfo(backward, setup_context, arity, where)
        self.changed()

    def clear_autograd(self) -> None:
        self.autograd = None
        self.changed()

    def clear_vmap_rule(self) -> None:
        self.vmap_rule = None
        self.changed()

    def set_vmap_rule(self, fn: Any) -> None:
        if not callable(fn):
            raise TypeError(f"{self.name}: register_vmap expects a callable rule, got {type(fn).__name__}")
        self.vmap_rule = fn
        self.changed()

    def set_sharding_rule(self, rule: Any) -> None:
        """Store a sharding rule (a string already checked by ``jaxops.sharding.parse_rule``, or a callable)."""
        if not isinstance(rule, str) and not callable(rule):
            raise TypeError(
                f"{self.name}: register_sharding expects a rule string or a callable, got {type(rule).__name__}"
            )
        if self.kernels.any_host:
            raise ValueError(
                f"{self.name}: register_sharding needs traceable kernels (a host kernel runs on one "
                "machine's NumPy arrays and cannot be partitioned)"
            )
        if not isinstance(rule, str) and not callable(rule):
            raise TypeError(
                f"{self.name}: register_sharding expects a rule string or a callable, got {type(rule).__name__}"
            )
        self.sharding_rule = rule
        self.changed()

    # ------------------------------------------------------------ call helpers
    def split(self, values: Sequence[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """``(arrays, statics)`` of schema-ordered values."""
        return tuple(values[i] for i in self.array_idx), tuple(values[i] for i in self.static_idx)

    def merge(self, arrays: Sequence[Any], statics: Sequence[Any]) -> list[Any]:
        """The inverse of :meth:`split` (static list arguments come back as lists)."""
        out: list[Any] = [None] * self.binder.n
        params = self.binder.params
        for i, v in zip(self.array_idx, arrays):
            out[i] = v
        for i, v in zip(self.static_idx, statics):
            out[i] = list(v) if isinstance(v, tuple) and params[i].type.is_list else v
        return out

    def call_kernel(self, kernel: Callable[..., Any], values: Sequence[Any]) -> Any:
        """Call ``kernel`` with schema-ordered ``values`` (positional + keyword-only)."""
        pos, kw = self.binder.split_call(list(values))
        return kernel(*pos, **kw)

    def leaves(self, values: Sequence[Any]) -> ArrayLeaves:
        """The flat array leaves of ``values`` (see :class:`ArrayLeaves`).

        A scalar parameter given a traced value (``jax.jit(op)(x, 2.0)``) is a dynamic
        operand of this call: it is among the leaves, like an array argument.
        """
        idx = self.array_idx
        if self.static_idx and any(isinstance(values[i], jax.core.Tracer) for i in self.static_idx):
            idx = sorted([*idx, *(i for i in self.static_idx if isinstance(values[i], jax.core.Tracer))])
        return ArrayLeaves(idx, values)

    def check_outputs(self, out: Any, *, host: bool = False) -> Any:
        """Validate a kernel's return value against the schema's returns.

        A host kernel may return Python numbers for ``Tensor`` returns (they become
        0-d NumPy arrays).
        """
        rets = self.function_schema.returns
        if not rets:
            if out is not None and out != ():
                raise RuntimeError(
                    f"{self.name}: the schema declares no return (-> ()), but the kernel returned "
                    f"{type(out).__name__}"
                )
            return None
        if self.function_schema.returns_tuple:
            if not isinstance(out, (tuple, list)) or len(out) != len(rets):
                got = f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
                raise RuntimeError(
                    f"{self.name}: the schema returns a tuple of {len(rets)} "
                    f"({self.schema_str.split('->')[-1].strip()}), but the kernel returned {got}"
                )
            return tuple(_check_return(self.name, r.type, o, i, host) for i, (r, o) in enumerate(zip(rets, out)))
        return _check_return(self.name, rets[0].type, out, 0, host)

    def finish_eager(self, out: Any) -> Any:
        """Eager results of non-Tensor returns (SymInt/float/bool) become Python scalars."""
        if not self.scalar_returns:
            return out
        rets = self.function_schema.returns
        if self.function_schema.returns_tuple:
            return tuple(_to_python(r.type, o) for r, o in zip(rets, out))
        return _to_python(rets[0].type, out)

    def no_kernel_error(self, platform: str) -> RuntimeError:
        return RuntimeError(dispatch.no_kernel_message(self.name, platform, [k for k, _ in self.kernels.items()]))


class ArrayLeaves:
    """The flat array leaves of one call's array arguments, and how to put new leaves back.

    The one flattening helper: kernels are dispatched, called back, batched and
    differentiated on flat leaves (``platform_dependent`` operands,
    ``pure_callback`` arguments, custom_vjp primals, custom_vmap operands);
    :meth:`rebuild` turns leaves back into schema-ordered values.
    """

    __slots__ = ("leaves", "treedef", "idx", "values")

    def __init__(self, array_idx: list[int], values: Sequence[Any]) -> None:
        self.idx = array_idx
        self.values = values
        self.leaves, self.treedef = jax.tree_util.tree_flatten([values[i] for i in array_idx])

    def rebuild(self, leaves: Sequence[Any], transform: Callable[[int, Any], Any] | None = None) -> list[Any]:
        """``values`` with the array arguments rebuilt from ``leaves`` (``transform(i, arg)`` applied)."""
        arrs = jax.tree_util.tree_unflatten(self.treedef, list(leaves))
        vals = list(self.values)
        for i, a in zip(self.idx, arrs):
            vals[i] = a if transform is None else transform(i, a)
        return vals

    def unflatten(self, leaves: Sequence[Any]) -> list[Any]:
        """The array arguments (in ``array_idx`` order) rebuilt from ``leaves``."""
        return jax.tree_util.tree_unflatten(self.treedef, list(leaves))


def _check_return(op_name: str, t: SchemaType, v: Any, i: int, host: bool) -> Any:
    if t.base != "Tensor":
        return v
    if t.is_list:
        if not isinstance(v, (list, tuple)):
            raise RuntimeError(f"{op_name}: return {i} must be a list of arrays (Tensor[]), got {type(v).__name__}")
        elem = dataclasses.replace(t, is_list=False, list_size=None, optional=t.elem_optional)
        return [_check_return(op_name, elem, e, i, host) for e in v]
    if v is None and t.optional:
        return None
    if host and isinstance(v, (bool, int, float, complex)):
        return np.asarray(v)
    if not (is_array(v) or isinstance(v, (jax.ShapeDtypeStruct, np.generic))):
        raise RuntimeError(f"{op_name}: return {i} must be an array (Tensor), got {type(v).__name__}")
    return v


def _to_python(t: SchemaType, v: Any) -> Any:
    if t.base == "Tensor" or not isinstance(v, (jax.Array, np.ndarray, np.generic)):
        return v
    if t.base in ("SymInt", "int"):
        return int(v)
    if t.base == "float":
        return float(v)
    if t.base == "bool":
        return bool(v)
    return v.item() if hasattr(v, "item") else v


__all__ = [
    "RESERVED_NAMESPACES",
    "ArrayLeaves",
    "AutogradInfo",
    "FakeRegistration",
    "OpDefinition",
    "check_kwarg_only_tensors",
    "check_schema_mutation",
    "check_vmap_method",
    "normalize_mutates_args",
    "parse_qualname",
    "python_parameter_names",
]
