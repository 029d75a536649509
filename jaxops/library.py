"""The low-level registry: PyTorch's ``torch.library.Library`` for jaxops.

>>> import jaxops
>>> lib = jaxops.Library("demo_lib", "DEF")
>>> lib.define("twice(Tensor x) -> Tensor")
'demo_lib::twice'
>>> lib.impl("twice", lambda x: 2 * x, "default")
>>> lib._destroy()

Dispatch keys: ``"cpu"``, ``"gpu"`` (``"cuda"``/``"rocm"``), ``"tpu"``,
``"default"`` (every device), ``"Meta"`` (the fake) and
``"CompositeImplicitAutograd"`` (a traceable body JAX differentiates itself).
A key for the current platform wins over ``"default"``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from jaxops import dispatch as _dispatch
from jaxops import registry as _registry
from jaxops.definition import RESERVED_NAMESPACES, check_kwarg_only_tensors, parse_qualname
from jaxops.op import CustomOp
from jaxops.schema import parse_schema
from jaxops.tags import Tag

#: ``alias_analysis`` values accepted by :meth:`Library.define` (PyTorch's; jaxops
#: always reads aliasing and mutation from the schema).
_ALIAS_ANALYSIS = ("", "FROM_SCHEMA")

_KINDS = ("DEF", "FRAGMENT", "IMPL")
_DEFINED_BY_DEF: dict[str, weakref.ref[Library]] = {}
_LIBRARIES: weakref.WeakSet[Library] = weakref.WeakSet()  # every live library (dispatch_keys)


class Library:
    """A handle that defines ops in a namespace and/or registers kernels for them.

    ``kind``: ``"DEF"`` (owns the namespace; one DEF library per namespace at a time),
    ``"FRAGMENT"`` (defines more ops in a namespace), ``"IMPL"`` (only registers kernels).
    """

    def __init__(self, ns: str, kind: str) -> None:
        if kind not in _KINDS:
            raise ValueError(f"Library kind must be one of {_KINDS}, got {kind!r}")
        if not isinstance(ns, str) or not ns.isidentifier():
            raise ValueError(f"Library namespace must be an identifier, got {ns!r}")
        if ns in RESERVED_NAMESPACES:
            raise ValueError(
                f"Library({ns!r}, {kind!r}): '{ns}' is a reserved namespace; choose your own "
                "namespace, e.g. Library('mylib', ...)"
            )
        if kind == "DEF":
            owner = _DEFINED_BY_DEF.get(ns)
            if owner is not None and owner() is not None and not owner()._destroyed:
                raise RuntimeError(
                    f"Library('{ns}', 'DEF'): namespace '{ns}' already has a DEF library; use "
                    f"Library('{ns}', 'FRAGMENT') to add ops to it, or _destroy() the first one"
                )
            _DEFINED_BY_DEF[ns] = weakref.ref(self)
        self.ns = ns
        self.kind = kind
        self._defined: list[CustomOp] = []
        self._kernels: list[tuple[CustomOp, str, Callable[..., Any]]] = []
        self._fakes: list[CustomOp] = []
        self._undo: list[Callable[[], None]] = []  # registrations made with lib=self
        self._destroyed = False
        _LIBRARIES.add(self)

    def __repr__(self) -> str:
        return f"Library(ns={self.ns!r}, kind={self.kind!r}, ops={len(self._defined)})"

    def _check_alive(self) -> None:
        if self._destroyed:
            raise RuntimeError(f"Library('{self.ns}', '{self.kind}') was destroyed")

    def define(self, schema: str, *, alias_analysis: str = "", tags: Sequence[Tag] | Tag = ()) -> str:
        """Define an op from a schema string ``"name(Tensor x, int y=2) -> Tensor"``.

        Returns the qualified name.  ``tags`` (:class:`jaxops.Tag` members) are stored on
        ``op.tags``; ``alias_analysis`` may be ``""`` or ``"FROM_SCHEMA"`` (aliasing and
        mutation always come from the schema).

        >>> # lib.define("twice(Tensor x) -> Tensor", tags=(jaxops.Tag.pointwise,))
        """
        self._check_alive()
        if self.kind == "IMPL":
            raise RuntimeError(f"Library('{self.ns}', 'IMPL') cannot define ops; use a DEF or FRAGMENT library")
        fs = parse_schema(schema)
        if not fs.name:
            raise ValueError(f"Library.define: the schema {schema!r} has no op name, e.g. 'foo(Tensor x) -> Tensor'")
        name = fs.name.split("::")[-1]
        if "::" in fs.name and fs.name.split("::")[0] != self.ns:
            raise ValueError(
                f"Library.define: schema name {fs.name!r} is not in this library's namespace '{self.ns}'"
            )
        qualname = f"{self.ns}::{name}"
        if alias_analysis not in _ALIAS_ANALYSIS:
            raise ValueError(
                f"{qualname}: Library.define(alias_analysis={alias_analysis!r}) is not supported; "
                "jaxops reads aliasing and mutation from the schema (use '' or 'FROM_SCHEMA' and "
                "mark mutated arguments as Tensor(a!) in the schema)"
            )
        check_kwarg_only_tensors(qualname, fs)
        op = CustomOp(qualname, fs, where=_dispatch.caller_location(), tags=tags)
        _registry.register(op)
        self._defined.append(op)
        return qualname

    def impl(
        self,
        op_name: str | CustomOp,
        fn: Callable[..., Any],
        dispatch_key: str = "default",
        *,
        host: bool = False,
        with_keyset: bool = False,
    ) -> None:
        """Register ``fn`` as the kernel of ``op_name`` for ``dispatch_key``.

        ``with_keyset=True`` (PyTorch passes the kernel a DispatchKeySet) is rejected:
        jaxops has no dispatch key sets.

        >>> # lib.impl("twice", lambda x: 2 * x, "cpu")
        """
        self._check_alive()
        op = self._resolve(op_name)
        if with_keyset:
            raise NotImplementedError(
                f"{op.name}: Library.impl(with_keyset=True) is not supported; jaxops kernels take "
                "the op's arguments only (there is no DispatchKeySet to pass)"
            )
        _dispatch.check_callable(op.name, "Library.impl", "kernel", fn)
        key = dispatch_key
        if key == "Meta":
            op.register_fake(fn)
            self._fakes.append(op)
            return
        device_types = device_types_of_key(op.name, key)
        fn = _dispatch.bind_to_op(op, fn)
        # Unlike register_kernel(None), "default" sits below platform kernels instead
        # of replacing them.
        op.definition.add_kernel(device_types, fn, host=host, where=_dispatch.caller_location())
        self._kernels.append((op, key, fn))

    def _resolve(self, op_name: str | CustomOp) -> CustomOp:
        if isinstance(op_name, CustomOp):
            return op_name
        name = op_name if "::" in op_name else f"{self.ns}::{op_name}"
        try:
            return _registry.lookup(name)
        except KeyError:
            raise RuntimeError(
                f"Library.impl: no op named {name!r} is defined; define it first with "
                f"Library('{self.ns}', 'DEF').define('{op_name.split('::')[-1]}(...) -> ...')"
            ) from None

    def _destroy(self) -> None:
        """Remove every op this library defined and every kernel/fake it registered."""
        if self._destroyed:
            return
        for op, _key, fn in self._kernels:
            op.definition.remove_kernel(fn)
        for op in self._fakes:
            op.definition.clear_fake()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        for op in self._defined:
            # an op redefined since (custom_op under the same name) is not this library's
            _registry.unregister(op.qualname, op.overload_name, only=op)
        self._kernels.clear()
        self._fakes.clear()
        self._defined.clear()
        self._destroyed = True
        owner = _DEFINED_BY_DEF.get(self.ns)
        if owner is not None and owner() is self:
            del _DEFINED_BY_DEF[self.ns]


def device_types_of_key(op_name: str, dispatch_key: Any) -> Any:
    """The ``device_types`` a dispatch key stands for (``None``: every device); ``ValueError`` if unknown.

    >>> device_types_of_key("mylib::f", "CompositeImplicitAutograd") is None, device_types_of_key("mylib::f", "CUDA")
    (True, 'cuda')
    """
    if dispatch_key in ("CompositeImplicitAutograd", "CompositeExplicitAutograd", "default", ""):
        return None
    if isinstance(dispatch_key, str) and dispatch_key.lower() in ("cpu", "gpu", "cuda", "rocm", "tpu"):
        return dispatch_key.lower()
    raise ValueError(
        f"{op_name}: unknown dispatch key {dispatch_key!r}; use 'cpu', 'gpu' ('cuda', 'rocm'), "
        "'tpu', 'default', 'Meta' or 'CompositeImplicitAutograd'"
    )


_DEFAULT_LIBS: dict[str, Library] = {}


def _lib_for(ns: str) -> Library:
    lib = _DEFAULT_LIBS.get(ns)
    if lib is None or lib._destroyed:
        lib = _DEFAULT_LIBS[ns] = Library(ns, "FRAGMENT")
    return lib


def define(qualname: str, schema: str, *, lib: Library | None = None, tags: Sequence[Tag] | Tag = ()) -> CustomOp:
    """Define an op ``"ns::name"`` from a schema without a name: ``"(Tensor x) -> Tensor"``.

    ``tags`` (:class:`jaxops.Tag` members) are stored on ``op.tags``.

    >>> import jaxops
    >>> op = jaxops.define("demo_def::neg", "(Tensor x) -> Tensor")
    >>> _ = jaxops.impl("demo_def::neg", "default", lambda x: -x)
    """
    ns, name = parse_qualname(qualname)
    if not isinstance(schema, str):
        raise TypeError(f"jaxops.define({qualname!r}): schema must be a str, got {type(schema).__name__}")
    target = lib if lib is not None else _lib_for(ns)
    head = schema.lstrip()
    if not head.startswith("("):
        named = head.split("(", 1)[0].strip().split("::")[-1]
        if named != name:
            raise ValueError(
                f"jaxops.define({qualname!r}, ...): the schema names the op {named!r}, not {name!r}; "
                f"give the schema without a name ('(Tensor x) -> Tensor') or with the same name"
            )
    full = schema if not head.startswith("(") else f"{name}{schema}"
    qual = target.define(full, tags=tags)
    return _registry.lookup(qual)


def impl(
    qualname: str,
    types: str | Sequence[str] | None,
    fn: Callable[..., Any] | None = None,
    *,
    lib: Library | None = None,
    host: bool = False,
) -> Any:
    """Register a kernel for ``qualname`` on ``types`` (device types or dispatch keys).

    Usable as a decorator: ``@jaxops.impl("ns::foo", "cpu")``.
    """
    ns, _ = parse_qualname(qualname.split(".")[0] if "." in qualname else qualname)
    target = lib if lib is not None else _lib_for(ns)
    if types is None:
        keys: list[Any] = ["default"]
    elif isinstance(types, str):
        keys = [types]
    else:
        try:
            keys = list(types)
        except TypeError:
            raise TypeError(
                f"{qualname}: jaxops.impl types must be a device type / dispatch key, a sequence of "
                f"them, or None, got {type(types).__name__}"
            ) from None
    for key in keys:  # validate every key before registering any (no half-registered op)
        if key != "Meta":
            device_types_of_key(qualname, key)

    def inner(f: Callable[..., Any]) -> Callable[..., Any]:
        _dispatch.check_callable(qualname, "jaxops.impl", "kernel", f)
        for key in keys:
            target.impl(qualname, f, key, host=host)
        return f

    return inner if fn is None else inner(fn)


def _check_lib(lib: Any) -> None:
    if lib is not None:
        if not isinstance(lib, Library):
            raise TypeError(f"lib= must be a jaxops.Library, got {type(lib).__name__}")
        lib._check_alive()


def _on_destroy(lib: Library | None, undo: Callable[[], None]) -> None:
    if lib is not None:
        lib._undo.append(undo)


def register_kernel(
    op_or_name: Any,
    device_types: Any,
    fn: Callable[..., Any] | None = None,
    /,
    *,
    host: bool | None = None,
    lib: Library | None = None,
) -> Any:
    """Functional form of ``op.register_kernel``; with ``lib``, ``lib._destroy()`` removes the kernel.

    >>> # jaxops.register_kernel("mylib::foo", "cpu", kernel, lib=lib)
    """
    op = _registry.as_op(op_or_name)
    _check_lib(lib)

    def inner(f: Callable[..., Any]) -> Callable[..., Any]:
        d = op.definition
        before = {id(k.fn) for _, k in d.kernels.items()}
        op.register_kernel(device_types, f, host=host)
        added = [k.fn for _, k in d.kernels.items() if id(k.fn) not in before]  # f, or its bound form

        def undo() -> None:
            for k in dict.fromkeys(added):
                d.remove_kernel(k)

        _on_destroy(lib, undo)
        return f

    return inner if fn is None else inner(fn)


def register_fake(op_or_name: Any, fn: Callable[..., Any] | None = None, /, *, lib: Library | None = None) -> Any:
    """Functional form of ``op.register_fake``; with ``lib``, ``lib._destroy()`` removes the fake.

    >>> # jaxops.register_fake("mylib::foo", lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), lib=lib)
    """
    op = _registry.as_op(op_or_name)
    _check_lib(lib)

    def inner(f: Callable[..., Any]) -> Callable[..., Any]:
        op.register_fake(f)
        d = op.definition

        def undo() -> None:
            if d.fake is not None and d.fake.fn is f:
                d.clear_fake()

        _on_destroy(lib, undo)
        return f

    return inner if fn is None else inner(fn)


def register_autograd(
    op_or_name: Any,
    backward: Callable[..., Any],
    /,
    *,
    setup_context: Callable[..., Any] | None = None,
    lib: Library | None = None,
) -> None:
    """Functional form of ``op.register_autograd``; with ``lib``, ``lib._destroy()`` removes it.

    >>> # jaxops.register_autograd("mylib::foo", backward, setup_context=setup, lib=lib)
    """
    op = _registry.as_op(op_or_name)
    _check_lib(lib)
    op.register_autograd(backward, setup_context=setup_context)
    d = op.definition
    registered = d.autograd

    def undo() -> None:
        if d.autograd is registered:
            d.clear_autograd()

    _on_destroy(lib, undo)


def register_vmap(op_or_name: Any, fn: Callable[..., Any] | None = None, /, *, lib: Library | None = None) -> Any:
    """Functional form of ``op.register_vmap``; with ``lib``, ``lib._destroy()`` removes the rule.

    >>> # jaxops.register_vmap("mylib::foo", rule, lib=lib)
    """
    op = _registry.as_op(op_or_name)
    _check_lib(lib)

    def inner(f: Callable[..., Any]) -> Callable[..., Any]:
        op.register_vmap(f)
        d = op.definition

        def undo() -> None:
            if d.vmap_rule is f:
                d.clear_vmap_rule()

        _on_destroy(lib, undo)
        return f

    return inner if fn is None else inner(fn)


def get_kernel(op_or_name: Any, device_type: str) -> Callable[..., Any]:
    """The kernel that would run for ``device_type`` (its own kernel, else the default one).

    >>> # jaxops.get_kernel(op, "cpu")(x)
    """
    op = _registry.as_op(op_or_name)
    keys = _dispatch.normalize_device_types(op.name, device_type)
    if keys == ("default",):
        raise ValueError(f"{op.name}: get_kernel needs a device type ('cpu', 'gpu', 'tpu'), got None")
    for key in keys:
        kernel = op.definition.kernels.for_platform(key)
        if kernel is not None:
            return kernel.fn
    raise RuntimeError(f"{op.name}: no kernel for device type {device_type!r} and no default kernel")


__all__ = ["Library", "define", "get_kernel", "impl", "register_autograd", "register_fake", "register_kernel", "register_vmap"]


def dispatch_keys(qualname: str) -> frozenset[str]:
    """The dispatch keys live libraries registered kernels of ``qualname`` under.

    The keys are as given to :meth:`Library.impl` (``"cpu"``, ``"default"``,
    ``"CompositeImplicitAutograd"``...); ``"Meta"`` for a fake. A destroyed library's
    registrations are gone.

    >>> import jaxops
    >>> lib = jaxops.Library("dispatch_keys_doc", "FRAGMENT")
    >>> _ = lib.define("twice(Tensor x) -> Tensor")
    >>> lib.impl("twice", lambda x: 2 * x, "CompositeImplicitAutograd")
    >>> sorted(dispatch_keys("dispatch_keys_doc::twice"))
    ['CompositeImplicitAutograd']
    >>> lib._destroy()
    """
    keys: set[str] = set()
    for lib in list(_LIBRARIES):
        keys.update(key for op, key, _fn in lib._kernels if op.name == qualname)
        keys.update("Meta" for op in lib._fakes if op.name == qualname)
    return frozenset(keys)
