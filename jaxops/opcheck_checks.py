"""The checks of ``opcheck`` that compare registrations: schema, autograd registration,
fake, eager vs ``jax.jit`` (``test_aot_dispatch_dynamic``) and vmap.

Each ``check_*`` takes an :class:`~jaxops.opcheck_case.OpCase` and the ``rtol``/``atol``
overrides and raises :class:`~jaxops.opcheck_case.CheckFailure` naming the registration at
fault; ``test_gradcheck`` lives in :mod:`jaxops.opcheck_gradients`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxops.opcheck_case import (
    CheckFailure,
    OpCase,
    compare_trees,
    describe_exc,
    is_float_leaf,
    is_out_of_memory,
    is_python_scalar,
)

_BATCH = 3


def check_schema(case: OpCase, rtol: float | None, atol: float | None) -> None:
    """``test_schema``: host kernels mutate only the declared arguments and return no alias of an input."""
    op = case.op
    mutable = op.mutated_args
    for _key, kernel in op.kernels.items():
        if not kernel.host:
            continue
        copies = [
            jax.tree_util.tree_map(lambda a: np.array(a, copy=True), v) if p.is_array and v is not None else v
            for p, v in zip(case.params, case.values)
        ]
        before = [
            jax.tree_util.tree_map(lambda a: np.array(a, copy=True), v) if p.is_array and v is not None else v
            for p, v in zip(case.params, copies)
        ]
        try:
            out = op.call_kernel(kernel.fn, copies)
        except Exception as e:  # noqa: BLE001
            raise CheckFailure(
                f"the host kernel at {kernel.where}",
                f"calling the host kernel directly on NumPy copies of the arguments raised {describe_exc(e)}",
                "make the kernel accept writable np.ndarray arguments of these shapes and dtypes",
            ) from e
        for p, now, then in zip(case.params, copies, before):
            if not p.is_array or now is None:
                continue
            if p.name in mutable:
                continue
            for a, b in zip(jax.tree_util.tree_leaves(now), jax.tree_util.tree_leaves(then)):
                if not np.array_equal(a, b, equal_nan=True):
                    raise CheckFailure(
                        f"the host kernel at {kernel.where} (or mutates_args of custom_op at {op.definition.where})",
                        f"Argument {p.name} is not defined as mutable but was mutated by the kernel",
                        f"either declare it, mutates_args={{{p.name!r}}} (the op then returns its new "
                        f"value), or stop writing to it (work on a copy: {p.name} = {p.name}.copy())",
                    )
        inputs = [(p.name, a) for p, v in zip(case.params, copies) if p.is_array and v is not None
                  for a in jax.tree_util.tree_leaves(v)]
        for k, o in enumerate(jax.tree_util.tree_leaves(out)):
            if not isinstance(o, np.ndarray):
                continue
            for pname, a in inputs:
                if np.shares_memory(o, a):
                    raise CheckFailure(
                        f"the host kernel at {kernel.where}",
                        f"Argument {pname} is not defined to alias output {k}, but output {k} of the "
                        f"kernel shares memory with {pname}",
                        f"return a fresh array (e.g. {pname}.copy(), or np.array(...)); outputs of an "
                        "op may not alias its inputs",
                    )
        try:
            op.check_outputs(out)
        except RuntimeError as e:
            raise CheckFailure(
                f"the host kernel at {kernel.where}",
                f"the kernel's return value does not match the schema {op.schema}: {e}",
                "return what the schema's return type says (or fix the return annotation)",
            ) from e


def check_autograd_registration(case: OpCase, rtol: float | None, atol: float | None) -> None:
    """``test_autograd_registration``: a differentiable host op has a formula, and it runs."""
    if not case.differentiable():
        return
    op = case.op
    if op.definition.autograd is None:
        if case.is_host:
            raise CheckFailure(
                "register_autograd (none registered)",
                "the op is a host op with floating-point inputs and outputs but no autograd formula; "
                "JAX cannot differentiate a host kernel, so jax.grad through it gives a zero "
                "gradient (with a warning) or an error",
                f"register a backward: {op.name.split('::')[-1]}.register_autograd(backward, "
                "setup_context=setup_context), or, if the op is not meant to be differentiated, "
                "opt out with opcheck(..., differentiable=False) (this check and test_gradcheck "
                "then report SKIPPED)",
            )
        return
    fn = case.float_fn()
    primals = case.float_leaves
    label = case.autograd_label()
    try:
        outs, vjp_fn = jax.vjp(fn, *primals)
        cts = [jnp.ones_like(o) for o in outs]
        grads = vjp_fn(cts)
    except Exception as e:  # noqa: BLE001
        if is_out_of_memory(e):
            raise
        raise CheckFailure(
            label,
            f"differentiating the op (jax.vjp) raised {describe_exc(e)}",
            "make backward(ctx, *grads) (and setup_context) run: save what backward needs with "
            "ctx.save_for_backward(...) in setup_context and return one gradient per positional input",
        ) from e
    for i, g, p in zip(case.float_idx, grads, primals):
        if np.shape(g) != np.shape(p):
            raise CheckFailure(
                label,
                f"the gradient for {case.leaf_names[i]} has shape {np.shape(g)}, expected {np.shape(p)}",
                "return gradients of the same shapes as the inputs from backward",
            )
        if not np.all(np.isfinite(np.asarray(g))) and np.all(np.isfinite(np.asarray(p))):
            raise CheckFailure(
                label,
                f"the gradient for {case.leaf_names[i]} has non-finite values {np.asarray(g)}",
                "check the backward formula for divisions by zero or logs of non-positive values",
            )


def check_faketensor(case: OpCase, rtol: float | None, atol: float | None) -> None:
    """``test_faketensor``: the fake's shapes and dtypes equal the kernel's."""
    op = case.op
    real = case.eager()
    label = case.fake_label()
    if case.is_host and op.active_fake() is None:
        raise CheckFailure(
            label,
            "the op is a host op with no fake, so it cannot be traced (jit, grad, vmap, eval_shape)",
            f"register one: @{op.name.split('::')[-1]}.register_fake returning "
            "jax.ShapeDtypeStruct(s) of the outputs",
        )
    fakes: list[tuple[str, Any]] = []
    try:
        fakes.append(("jax.eval_shape", jax.eval_shape(case.call, case.leaves)))
        if op.definition.fake is not None and not case.is_host and not op.mutated_args:
            # A traceable op's own fake is not used for tracing, but plan() and profiles use it.
            fakes.append(("the fake", op.abstract_eval(case.values)[0]))
    except Exception as e:  # noqa: BLE001
        raise CheckFailure(
            label,
            f"evaluating the fake (shape-only) raised {describe_exc(e)}",
            "make the fake run on abstract arguments (use x.shape / x.dtype and jnp functions only, "
            "no NumPy on values)",
        ) from e
    real_leaves, real_tree = jax.tree_util.tree_flatten(real)
    for how, fake in fakes:
        fake_leaves, fake_tree = jax.tree_util.tree_flatten(fake)
        if len(fake_leaves) != len(real_leaves):
            raise CheckFailure(
                label,
                f"the fake ({how}) describes {len(fake_leaves)} output(s) but the kernel returned "
                f"{len(real_leaves)}",
                "return one jax.ShapeDtypeStruct per output of the kernel, in the same structure",
            )
        for k, (f, r) in enumerate(zip(fake_leaves, real_leaves)):
            fshape, rshape = tuple(f.shape), tuple(np.shape(r))
            ok = len(fshape) == len(rshape) and all(
                not isinstance(fd, (int, np.integer)) or int(fd) == rd for fd, rd in zip(fshape, rshape)
            )
            if not ok:
                raise CheckFailure(
                    label,
                    f"output {k}: Shapes {fshape} (fake) and {rshape} (real, from the kernel) are not equal",
                    "make the fake compute the output shape from the input shapes exactly as the "
                    "kernel does (use get_ctx().new_dynamic_size() for data-dependent sizes)",
                )
            if is_python_scalar(r):
                continue  # a SymInt/float/bool return: no dtype to compare
            if np.dtype(f.dtype) != np.dtype(r.dtype):
                raise CheckFailure(
                    label,
                    f"output {k}: Dtypes {np.dtype(f.dtype)} (fake) and {np.dtype(r.dtype)} (real, from "
                    "the kernel) are not equal",
                    "make the fake return the dtype the kernel returns (e.g. x.dtype, or the promoted "
                    "dtype jnp.result_type(x, y)); or make the kernel cast its result",
                )


def _vjp_cotangents(outs: list[Any], seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(np.shape(o)), o.dtype) for o in outs]


def check_aot_dispatch_dynamic(case: OpCase, rtol: float | None, atol: float | None) -> None:
    """``test_aot_dispatch_dynamic``: eager equals ``jax.jit``, values and gradients."""
    op = case.op
    eager = case.eager()
    if case.has_dynamic_sizes():
        try:
            jax.jit(case.call)(case.leaves)
        except Exception as e:  # noqa: BLE001
            if "data-dependent" in str(e):
                return
            raise CheckFailure(
                case.fake_label(),
                f"an op with data-dependent output sizes raised {describe_exc(e)} under jax.jit "
                "instead of the documented data-dependent error",
                "keep get_ctx().new_dynamic_size() only for sizes that really depend on values",
            ) from e
        return
    try:
        # blocked here: on an accelerator a host callback's error arrives with the result
        jitted = jax.block_until_ready(jax.jit(case.call)(case.leaves))
    except Exception as e:  # noqa: BLE001
        raise CheckFailure(
            case.fake_label() if case.is_host else case.kernel_label(),
            f"eager vs jax.jit: the op runs eagerly but raised {describe_exc(e)} under jax.jit",
            "host ops run through a callback whose shapes come from the fake: check the fake; "
            "traceable kernels must not branch on array values in Python",
        ) from e
    mismatch = compare_trees(eager, jitted, rtol=rtol, atol=atol, what="eager vs jax.jit")
    if mismatch is not None:
        problem, err = mismatch
        raise CheckFailure(
            case.kernel_label() if not case.is_host else f"{case.kernel_label()} or {case.fake_label()}",
            problem + f"\n{str(err).strip()}",
            "the kernel must compute the same values when called eagerly and under jax.jit: no "
            "hidden state or randomness, and a host op's fake must give the kernel's dtype (the "
            "callback casts to it); pass atol=/rtol= if the difference is acceptable rounding",
        ) from err
    if not case.want_grad or not case.differentiable() or (case.is_host and op.definition.autograd is None):
        return
    fn = case.float_fn()

    def grads(*primals: Any) -> Any:
        outs, vjp_fn = jax.vjp(fn, *primals)
        return vjp_fn(_vjp_cotangents(outs))

    label = case.autograd_label()
    try:
        g_eager = grads(*case.float_leaves)
        g_jit = jax.jit(grads)(*case.float_leaves)
    except Exception as e:  # noqa: BLE001
        raise CheckFailure(
            label,
            f"eager vs jax.jit: computing gradients raised {describe_exc(e)}",
            "make the backward formula traceable (JAX operations on ctx.saved_tensors and the "
            "incoming gradients)",
        ) from e
    mismatch = compare_trees(list(g_eager), list(g_jit), rtol=rtol, atol=atol, what="eager vs jax.jit gradients")
    if mismatch is not None:
        problem, err = mismatch
        raise CheckFailure(
            label,
            problem + f"\n{str(err).strip()}",
            "the backward must compute the same gradients eagerly and under jax.jit (no hidden "
            "state, no Python branching on values)",
        ) from err


def _batch_leaf(x: Any, axis: int) -> Any:
    """``_BATCH`` distinct examples of ``x`` stacked along ``axis``."""
    if is_float_leaf(x):
        examples = [x * jnp.asarray(1.0 - 0.1 * b, x.dtype) for b in range(_BATCH)]
    else:
        examples = [x] * _BATCH
    return jnp.stack(examples, axis=axis)


def _vmap_configs(case: OpCase) -> list[tuple[str, list[Any]]]:
    """``(description, per-parameter batch axis or None)`` configurations to test."""
    arrays = [i for i, (p, v) in enumerate(zip(case.params, case.values)) if p.is_array and v is not None]
    if not arrays:
        return []
    configs: list[tuple[str, list[Any]]] = []
    all0: list[Any] = [0 if i in arrays else None for i in range(len(case.params))]
    configs.append(("all array arguments batched (in_axes=0)", all0))
    if len(arrays) > 1:
        for i in arrays:
            one = [0 if j == i else None for j in range(len(case.params))]
            configs.append((f"only {case.params[i].name} batched", one))
    last: list[Any] = []
    for j, v in enumerate(case.values):
        if j not in arrays:
            last.append(None)
        elif isinstance(v, (list, tuple)):
            last.append([np.ndim(e) for e in v])
        else:
            last.append(np.ndim(v))
    if any((a != 0 if not isinstance(a, list) else any(x != 0 for x in a)) for a in last if a is not None):
        configs.append(("batch axis last (non-zero in_axes)", last))
    return configs


def check_vmap(case: OpCase, rtol: float | None, atol: float | None) -> None:
    """``test_vmap``: ``jax.vmap`` of the op equals a loop over the examples."""
    if case.has_dynamic_sizes():
        return
    case.eager()
    for description, axes in _vmap_configs(case):
        batched_values: list[Any] = []
        in_axes: list[Any] = []
        for v, ax in zip(case.values, axes):
            if ax is None:
                batched_values.append(v)
                in_axes.append(None)
            elif isinstance(v, (list, tuple)):
                axl = ax if isinstance(ax, list) else [ax] * len(v)
                batched_values.append([_batch_leaf(e, a) for e, a in zip(v, axl)])
                in_axes.append(list(axl))
            else:
                batched_values.append(_batch_leaf(v, ax))
                in_axes.append(ax)
        arr_pos = [j for j, p in enumerate(case.params) if p.is_array]

        def per_arrays(*arrs: Any, _bv: list[Any] = batched_values, _pos: list[int] = arr_pos) -> Any:
            vals = list(_bv)
            for j, a in zip(_pos, arrs):
                vals[j] = a
            return case.call_values(vals)

        arr_args = [batched_values[j] for j in arr_pos]
        arr_axes = [in_axes[j] for j in arr_pos]
        try:
            got = jax.vmap(per_arrays, in_axes=tuple(arr_axes))(*arr_args)
        except Exception as e:  # noqa: BLE001
            raise CheckFailure(
                case.vmap_label(),
                f"jax.vmap of the op ({description}) raised {describe_exc(e)}",
                "the vmap rule must handle in_dims of None (unbatched) and any batch axis; return "
                "(output, out_dims) with out_dims matching the output structure",
            ) from e
        examples = []
        for b in range(_BATCH):
            vals = []
            for v, ax in zip(batched_values, in_axes):
                if ax is None:
                    vals.append(v)
                elif isinstance(v, list):
                    vals.append([jnp.take(e, b, axis=a) for e, a in zip(v, ax)])
                else:
                    vals.append(jnp.take(v, b, axis=ax))
            examples.append(case.call_values(vals))
        expected = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *examples)
        mismatch = compare_trees(expected, got, rtol=rtol, atol=atol, what=f"vmap vs a loop ({description})")
        if mismatch is not None:
            problem, err = mismatch
            raise CheckFailure(
                case.vmap_label(),
                problem + f"\n{str(err).strip()}",
                "the batched result must equal calling the op once per example and stacking "
                "(out_axes=0): check how the rule moves the batch axis (in_dims may be None or "
                "non-zero); a host op with vmap_method='expand_dims'/'broadcast_all' needs a "
                "kernel that handles a leading batch axis, otherwise use 'sequential'",
            ) from err
