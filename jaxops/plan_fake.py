"""Fakes standing in for traceable op bodies while :func:`jaxops.plan` traces.

:func:`trace_through_fake` is installed as the core's fake tracer
(``jaxops.hooks.set_fake_tracer``) during planning; the ``pure_callback`` it
emits calls a :class:`Placeholder`, which :func:`is_placeholder` recognises in
the jaxpr walk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np


# ------------------------------------------------------------ fakes for bodies
class Placeholder:
    """The ``pure_callback`` target that stands in for a traceable op's body under :func:`plan`.

    Plans are never compiled nor run, so it is not called; if it were, it would
    run the body eagerly and give the right result.
    """

    __slots__ = ("op_name", "body")

    def __init__(self, op_name: str, body: Callable[..., Any]) -> None:
        self.op_name = op_name
        self.body = body

    def __call__(self, *arrays: Any) -> Any:
        out = self.body(*arrays)
        return jax.tree_util.tree_map(np.asarray, out)

    def __repr__(self) -> str:
        return f"<jaxops.plan fake of {self.op_name}>"


def trace_through_fake(defn: Any, kernel: Any, values: list[Any], operands: tuple[Any, ...],
                       body: Callable[..., Any]) -> Any:
    """Under :func:`plan`: the outputs of a traceable op's call, from its registered fake.

    Installed as the core's fake tracer (``jaxops.hooks.set_fake_tracer``) while
    :func:`plan` traces, so the op's traced kernel dispatch calls it for an op
    with a registered fake.  ``operands`` are the call's array leaves,
    ``body(*operands)`` runs the kernel.  The fake's shapes come out of a
    ``pure_callback`` (never run: plans are not compiled), so the body is not
    traced and its FLOPs are unknown unless :func:`register_cost` gives them.
    The body is traced only when the call is differentiated without a
    registered backward (``jax.grad`` needs the body's derivative: a
    ``custom_jvp`` whose rule is the body's JVP).  A fake that asks for dynamic
    sizes gives the data-dependent primitive of :mod:`jaxops.dynamic` instead.

    >>> # jaxops.kernels: return hooks.FAKE_TRACER[0](defn, kernel, vals, leaves, run_body)
    """
    from jaxops import dynamic as _dyn
    from jaxops import fake as _fake

    op = defn
    out_shapes, dynamic = _fake.abstract_eval(defn, values)
    if dynamic:
        return _dyn.data_dependent_call(defn, kernel, values, out_shapes)
    placeholder = Placeholder(op.name, body)

    def primal(*xs: Any) -> Any:
        out = jax.pure_callback(placeholder, out_shapes, *xs, vmap_method="broadcast_all")
        return op.check_outputs(out)

    def jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
        try:
            return jax.jvp(body, primals, tangents)
        except NotImplementedError as e:
            e.add_note(
                f"{op.name}: jaxops.plan of a derivative traces the op's body (its fake gives no "
                f"derivative); register a backward with register_autograd to plan it without the body"
            )
            raise

    f = jax.custom_jvp(primal)
    f.defjvp(jvp)
    return f(*operands)


def is_placeholder(eqn: Any) -> bool:
    """True for the ``pure_callback`` of :func:`trace_through_fake`."""
    call = eqn.params.get("call")  # jaxops.dynamic's data-dependent primitive
    if call is not None and eqn.primitive.name == "jaxops_data_dependent":
        return not getattr(getattr(call, "kernel", None), "host", True)
    return isinstance(getattr(eqn.params.get("callback"), "callback_func", None), Placeholder)
