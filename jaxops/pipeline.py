"""How a call of an op runs: the traced pipeline, the eager pipeline, the hot path.

* :func:`traced_pipeline` composes the stages, outermost first::

      autograd.stage(vmap.stage(sharding.stage(kernels.stage(runner))))

  where ``runner`` runs one kernel (``kernels.runner``, or ``mutation.runner``
  for an op that mutates arguments).  Each stage receives the definition and the
  stage below it, so registrations *nest*: an op with a vmap rule and a sharding
  rule is batched by its rule and partitioned by its sharding rule.
* The op's one ``jax.jit`` callable (named after the op) runs the traced
  pipeline; eagerly its C++ cache means no retrace per call.
* :class:`Pipeline` holds the eager pipeline of one definition: binding, then
  (for a mutating op) ``jax.Ref`` handling, then eager host kernels, factories,
  the jitted callable or the op-by-op fallback.  It rebuilds itself whenever the
  definition signals a change.
* The hot path (:func:`make_fast_entry`): a function generated for the op's
  signature, so Python binds the arguments (defaults, keywords, keyword-only)
  and each is checked inline before the jitted callable is called.  Its source
  is registered in :mod:`linecache` under ``<jaxops NAME call>``.

>>> # pipe = Pipeline(defn); out = pipe.entry(x, y, alpha=2.0)
"""

from __future__ import annotations

import functools
import keyword
import linecache
from collections.abc import Callable
from typing import Any

import jax

from jaxops import autograd, dispatch, hooks, kernels, mutation, registry, sharding, vmap
from jaxops.binding import EXACT_ARRAY_TYPES, MISSING
from jaxops.definition import OpDefinition

_Tracer = jax.core.Tracer

#: What tracing a body with data-dependent shapes raises (jnp.nonzero, boolean masks, ...).
DATA_DEPENDENT_ERRORS: tuple[type[BaseException], ...] = (
    jax.errors.ConcretizationTypeError,
    jax.errors.NonConcreteBooleanIndexError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


def traced_pipeline(defn: OpDefinition) -> Callable[[list[Any]], Any]:
    """The stages of a traced call, composed (see the module docstring)."""
    run_kernel = mutation.runner(defn) if defn.mutated_args else kernels.runner(defn)
    inner = kernels.stage(defn, run_kernel)
    inner = sharding.stage(defn, inner)
    inner = vmap.stage(defn, inner)
    return autograd.stage(defn, inner)


def _traced_entry_dynamic(
    pipe: Pipeline, arrays: tuple[Any, ...], scalars: tuple[Any, ...], statics_key: tuple[Any, Any, Any]
) -> Any:
    """Like :func:`_traced_entry`, with traced scalar arguments as dynamic operands."""
    statics, where, key = statics_key
    filled = list(statics)
    for i, v in zip(where, scalars):
        filled[i] = v
    return _traced_entry(pipe, arrays, (tuple(filled), key))


def _traced_entry(pipe: Pipeline, arrays: tuple[Any, ...], statics_key: tuple[Any, Any]) -> Any:
    """Body of the op's jitted callable: everything that happens under tracing."""
    statics, _ = statics_key
    values = pipe.defn.merge(arrays, statics)
    if pipe.defn.shape_check is not None:
        pipe.defn.shape_check(values)
    return pipe.traced(values)


class Pipeline:
    """The call pipelines of one op definition (rebuilt on every change of it)."""

    def __init__(self, defn: OpDefinition) -> None:
        self.defn = defn
        defn.subscribe(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        """Drop everything derived from the definition (JAX's caches miss through the epoch)."""
        d = self.defn
        self.traced = traced_pipeline(d)
        self.jitted = self.make_jitted()
        self.jitted_dynamic: Callable[..., Any] | None = None  # made on the first traced scalar
        # A host op with no autograd formula applies the fallback mode (warn / error)
        # while its derivative is traced.  JAX caches the derivative of a jitted
        # jaxpr, so a cached inner trace would apply it only the first time: such an
        # op gets a fresh inner trace per outer trace (trace time only).
        self.fresh_trace = d.autograd is None and d.kernels.any_host
        self.op_by_op = False  # set when the body turned out to be untraceable eagerly
        self.eager = mutation.eager_stage(d, self.call_values) if d.mutated_args else self.call_values
        self.entry: Callable[..., Any] = make_fast_entry(self) or self.slow_entry

    def make_jitted(self, body: Callable[..., Any] = _traced_entry, static: int = 1) -> Callable[..., Any]:
        """The op's ``jax.jit`` callable, named after the op (plan and jaxprs show it)."""
        entry = functools.partial(body, self)
        functools.update_wrapper(entry, body)
        entry.__name__ = self.defn.name  # type: ignore[attr-defined]
        entry.__qualname__ = self.defn.name  # type: ignore[attr-defined]
        return jax.jit(entry, static_argnums=(static,))

    def _call_with_traced_scalars(self, arrays: tuple[Any, ...], statics: tuple[Any, ...]) -> Any:
        """A call whose scalar arguments include traced values (``jax.jit(op)(x, 2.0)``).

        They become dynamic operands of the op's jit (traceable kernels receive a
        traced scalar, host kernels a NumPy scalar); a kernel that needs one static
        (a shape) gets an error naming ``static_argnums``.
        """
        d = self.defn
        where = tuple(k for k, v in enumerate(statics) if isinstance(v, _Tracer))
        scalars = tuple(statics[k] for k in where)
        rest = tuple(None if k in where else v for k, v in enumerate(statics))
        if self.jitted_dynamic is None:
            self.jitted_dynamic = self.make_jitted(_traced_entry_dynamic, 2)
        try:
            return self.jitted_dynamic(arrays, scalars, (rest, where, registry.epoch()))
        except (TypeError, *DATA_DEPENDENT_ERRORS) as e:
            names = ", ".join(repr(d.binder.params[d.static_idx[k]].name) for k in where)
            first = str(e).split("\n", 1)[0][:300]
            raise TypeError(
                f"{d.name}: argument {names} got a traced value, and the kernel could not use it "
                f"traced ({type(e).__name__}: {first}); if it must be concrete (e.g. a shape), pass "
                "it statically: jax.jit(f, static_argnums=...) or eqx.filter_jit, which keeps "
                "Python numbers static"
            ) from e

    # ------------------------------------------------------------------ eager
    def slow_entry(self, *args: Any, **kwargs: Any) -> Any:
        """The general entry (ops with no hot path, or after the op-by-op fallback)."""
        return self.slow_call(args, kwargs)

    def slow_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Bind and validate against the schema, then run the eager pipeline."""
        return self.eager(self.defn.binder.bind(args, kwargs))

    def call_values(self, values: list[Any]) -> Any:
        """The eager pipeline on bound values (no ``jax.Ref`` left in them)."""
        arrays, statics = self.defn.split(values)
        out = self._dispatch(values, arrays, statics)
        recorder = hooks.CALL_RECORDER[0]
        if recorder is not None:
            recorder(self.defn, values, out)
        return out

    def _dispatch(self, values: list[Any], arrays: tuple[Any, ...], statics: tuple[Any, ...]) -> Any:
        d = self.defn
        leaves = jax.tree_util.tree_leaves(arrays)
        concrete = not any(isinstance(v, _Tracer) for v in leaves)
        if not concrete:
            registry.note_traced(d)  # the traces around this call depend on the op
        if any(isinstance(v, _Tracer) for v in statics):
            registry.note_traced(d)
            return self._call_with_traced_scalars(arrays, statics)
        if not leaves:
            device = self._factory_device(values)
            if concrete and device is not None:
                return self._call_factory(values, device)
        if concrete and leaves and d.kernels:
            platform = dispatch.platform_of_leaves(leaves)
            kernel = d.kernels.for_platform(platform)
            if kernel is None:
                raise d.no_kernel_error(platform)
            if kernel.host:
                return self._host_eager(kernel, values, leaves)
        if concrete and self.op_by_op:
            out = self.run_op_by_op(arrays, statics)
        else:
            jitted = self.make_jitted() if self.fresh_trace and not concrete else self.jitted
            try:
                out = jitted(arrays, (statics, registry.epoch()))
            except DATA_DEPENDENT_ERRORS:
                if not concrete:
                    raise
                out = self.run_op_by_op(arrays, statics)
        return d.finish_eager(out) if concrete else out

    def run_op_by_op(self, arrays: tuple[Any, ...], statics: tuple[Any, ...]) -> Any:
        """Eager fallback for a traceable body that cannot be traced (data-dependent shapes).

        ``jnp.nonzero(x)`` and friends work on concrete arrays only; eagerly the op
        then runs its body op by op, as PyTorch would.  Under an outer ``jit`` the
        tracing error reaches the user unchanged.  The op remembers this (until its
        next registration), so later eager calls do not try to trace it again.
        """
        self.op_by_op = True
        self.entry = self.slow_entry  # the hot path would trace first
        with jax.disable_jit():
            return self.jitted(arrays, (statics, registry.epoch()))

    def fast_fallback(self, arrays: tuple[Any, ...], statics: tuple[Any, ...], exc: BaseException) -> Any:
        """Called by the hot path when tracing the body failed."""
        if any(isinstance(a, _Tracer) for a in jax.tree_util.tree_leaves(arrays)):
            raise exc
        return self.run_op_by_op(arrays, statics)

    def _host_eager(self, kernel: dispatch.Kernel, values: list[Any], leaves: list[Any]) -> Any:
        if self.defn.shape_check is not None:
            self.defn.shape_check(values)
        if self.defn.mutated_args:
            return mutation.host_eager(self.defn, kernel, values, leaves)
        return kernels.host_eager(self.defn, kernel, values, leaves)

    # -- factories ---------------------------------------------------------------
    def _factory_device(self, values: list[Any]) -> Any:
        d = self.defn
        for i in d.device_idx:
            if values[i] is not None:
                return values[i]
        raise RuntimeError(
            f"{d.name}: there were no Tensor inputs to this op (e.g. an empty list or None "
            "for every array). A factory op (one that takes no arrays and creates new ones) "
            "must take a `device: jax.Device` argument and be called with it"
        )

    def _call_factory(self, values: list[Any], device: Any) -> Any:
        d = self.defn
        dev = dispatch.resolve_device(d.name, device)
        platform = dispatch.platform_of_device(dev)
        kernel = d.kernels.for_platform(platform)
        if kernel is None:
            raise d.no_kernel_error(platform)
        if kernel.host:
            out = self._host_eager(kernel, values, [])
        else:
            arrays, statics = d.split(values)
            with jax.default_device(dev):
                out = d.finish_eager(self.jitted(arrays, (statics, registry.epoch())))
        return jax.tree_util.tree_map(lambda v: jax.device_put(v, dev) if isinstance(v, jax.Array) else v, out)


# ------------------------------------------------------------------ hot path
_EXACT = {"float": float, "SymInt": int, "int": int, "bool": bool, "str": str}


def _fast_path_applies(d: OpDefinition) -> bool:
    ks = dict(d.kernels.items())
    params = d.binder.params
    # Platform kernels next to a traceable default are chosen by the op's jit when it is
    # lowered for the inputs' platform (lax.platform_dependent), so they keep the hot path.
    return (
        "default" in ks
        and not any(k.host for k in ks.values())
        and not d.mutated_args
        and not d.scalar_returns
        and any(p.is_array for p in params)
        and all(p.name.isidentifier() and not keyword.iskeyword(p.name) and not p.name.startswith("_jx")
                for p in params)
    )


def make_fast_entry(pipe: Pipeline) -> Callable[..., Any] | None:
    """Generate the op's hot path, or None when the op needs the general path.

    Python binds the call (defaults are pre-validated; missing, extra or unknown
    arguments fall back to the binder for its messages); arguments whose exact
    type is the common one (a JAX array for ``Tensor``, a float for ``float``...)
    skip their checker, others go through it, so validation and messages stay
    those of the general path.
    """
    d = pipe.defn
    if not _fast_path_applies(d):
        return None
    params = d.binder.params
    env: dict[str, Any] = {
        "_jx_M": MISSING,
        "_jx_ARR": EXACT_ARRAY_TYPES,
        "_jx_REC": hooks.CALL_RECORDER,
        "_jx_slow": pipe.slow_call,
        "_jx_jit": pipe.jitted,
        "_jx_epoch": registry.epoch,
        "_jx_DDE": DATA_DEPENDENT_ERRORS,
        "_jx_fallback": pipe.fast_fallback,
        "_jx_pick": _pick,
        "_jx_TR": _Tracer,
        "_jx_note": functools.partial(registry.note_traced, d),
    }
    sig: list[str] = []
    kwonly: list[str] = []
    checks: list[str] = []
    for i, p in enumerate(params):
        if p.default is MISSING:
            default = "_jx_M"
        else:
            try:
                env[f"_jx_d{i}"] = p.check(list(p.default) if isinstance(p.default, list) else p.default)
            except (TypeError, ValueError):
                return None
            default = f"_jx_d{i}"
        (kwonly if p.kwarg_only else sig).append(f"{p.name}={default}")
        env[f"_jx_c{i}"] = p.check
        n, t = p.name, p.type
        guard = f"{n} is not None and " if t.optional else ""
        if p.kind == "tensor":
            # off the hot path: a traced call records the traces around it (registry.note_traced)
            checks += [
                f"    if {guard}type({n}) not in _jx_ARR:",
                f"        {n} = _jx_c{i}({n})",
                f"        if isinstance({n}, _jx_TR): _jx_note()",
            ]
        elif p.kind == "tensor_list" and t.list_size is None:  # a list of exact arrays passes as is
            checks += [
                f"    if {guard}type({n}) is not list: {n} = _jx_c{i}({n})",
                f"    elif {n} is not None:" if t.optional else "    else:",
                f"        for _jx_e in {n}:",
                "            if type(_jx_e) not in _jx_ARR:",
                f"                {n} = _jx_c{i}({n})",
                f"                if any(isinstance(_jx_t, _jx_TR) for _jx_t in {n}): _jx_note()",
                "                break",
            ]
        elif p.kind == "static" and t.base in _EXACT and not t.is_list:
            env[f"_jx_t{i}"] = _EXACT[t.base]
            checks += [
                f"    if {guard}type({n}) is not _jx_t{i}:",
                f"        {n} = _jx_c{i}({n})",
                f"        if isinstance({n}, _jx_TR):  # a traced scalar: a dynamic operand (general path)",
                "            return _jx_slow((), _jx_pick({" + ", ".join(f"{q.name!r}: {q.name}" for q in params) + "}, {}))",
            ]
        else:
            checks.append(f"    {n} = _jx_c{i}({n})")
    if not any(p.kind == "tensor" and not p.type.optional for p in params):
        # no argument guarantees an array: a call with none (None, empty lists) is a
        # factory call, for the general path
        has_leaves = " or ".join(_has_leaves_expr(p) for p in params if p.is_array)
        checks += [f"    if not ({has_leaves}):", "        return _jx_slow((), _jx_pick({"
                   + ", ".join(f"{p.name!r}: {p.name}" for p in params) + "}, {}))"]
    required = [p.name for p in params if p.default is MISSING]
    positional = [p.name for p in params if not p.kwarg_only]
    kwonly_names = [p.name for p in params if p.kwarg_only]
    arrays = "".join(f"{params[i].name}, " for i in d.array_idx)
    statics = "".join(f"{params[i].name}, " for i in d.static_idx)
    missing = "".join(f" or {n} is _jx_M" for n in required)
    lines = [
        f"def call({', '.join([*sig, '*_jx_extra', *kwonly, '**_jx_kw'])}):",
        f"    if _jx_extra or _jx_kw{missing} or _jx_REC[0] is not None:",
        "        if _jx_extra:",
        f"            return _jx_slow(({''.join(f'{n}, ' for n in positional)}) + _jx_extra, "
        f"_jx_pick({{{', '.join(f'{n!r}: {n}' for n in kwonly_names)}}}, _jx_kw))",
        f"        return _jx_slow((), _jx_pick({{{', '.join(f'{p.name!r}: {p.name}' for p in params)}}}, _jx_kw))",
        *checks,
        "    try:",
        f"        return _jx_jit(({arrays}), (({statics}), _jx_epoch()))",
        "    except _jx_DDE as e:",
        f"        return _jx_fallback(({arrays}), ({statics}), e)",
    ]
    source = "\n".join(lines) + "\n"
    filename = f"<jaxops {d.name} call>"
    exec(compile(source, filename, "exec"), env)  # noqa: S102 - generated from the op's own schema
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    fn = env["call"]
    code = fn.__code__.replace(co_name=d.name)
    if hasattr(code, "co_qualname"):
        code = code.replace(co_qualname=d.name)
    fn.__code__ = code
    fn.__name__ = fn.__qualname__ = d.name
    return fn


def _has_leaves_expr(p: Any) -> str:
    """Python source that is true when the (checked) value of ``p`` holds an array."""
    if p.kind == "tensor":
        return f"{p.name} is not None"
    if p.type.elem_optional:
        return f"({p.name} is not None and any(e is not None for e in {p.name}))"
    return f"bool({p.name})"


def _pick(named: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The arguments a call actually passed (for the binder, which then reports what is wrong)."""
    out = {k: v for k, v in named.items() if v is not MISSING}
    out.update(extra)
    return out


__all__ = ["DATA_DEPENDENT_ERRORS", "Pipeline", "make_fast_entry", "traced_pipeline"]
