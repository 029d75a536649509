"""Count how often jitted functions are traced and compiled.

``compile_counter()`` is the tool behind "this training step compiled once":

>>> import jax, jax.numpy as jnp
>>> from jaxops.monitoring import compile_counter
>>> @jax.jit
... def step(x):
...     return jnp.sin(x) * 2
>>> with compile_counter() as counter:
...     _ = step(jnp.ones(3))
...     _ = step(jnp.ones(3))      # cache hit: no trace, no compile
...     _ = step(jnp.ones(4))      # new shape: traced and compiled again
>>> counter.traces["step"], counter.compiles["step"], counter.traces["other"]
(2, 2, 0)

Mechanism (measured on JAX 0.10.2): ``jax.monitoring`` emits duration events
with a ``fun_name`` keyword argument:

* ``/jax/core/compile/jaxpr_trace_duration`` with ``fun_name="step"`` each time
  a top-level ``jit`` traces its Python function (a ``jit`` called while another
  ``jit`` is tracing is inlined into the outer trace and emits nothing);
* ``/jax/core/compile/jaxpr_to_mlir_module_duration`` with ``fun_name="jit(step)"``
  when the traced program is lowered;
* ``/jax/core/compile/backend_compile_duration`` with ``fun_name="jit(step)"``
  when XLA compiles it (also on a persistent-cache hit, which still goes through
  the compile path).

A call that hits the in-memory cache emits none of them.  Eager array creation
(``jnp.ones``) also compiles small programs (``convert_element_type``,
``broadcast_in_dim``); they appear under their own names, so look up the name
of your function.  ``jit(value_and_grad(loss))`` is reported under ``"loss"``,
``jit(lambda ...)`` under ``"<lambda>"``.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from types import TracebackType

from jax import monitoring

__all__ = ["CompileCounter", "compile_counter"]

_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_WRAPPERS = ("jit(", "pjit(", "pmap(", "xla_pmap(")


def _plain_name(name: str) -> str:
    """Strip JAX's ``jit(...)`` wrapper from an event's function name.

    >>> _plain_name("jit(step)"), _plain_name("step")
    ('step', 'step')
    """
    for prefix in _WRAPPERS:
        if name.startswith(prefix) and name.endswith(")"):
            return name[len(prefix) : -1]
    return name


class CompileCounter:
    """Per-function trace / lowering / compile counts collected by ``compile_counter()``.

    ``traces``, ``lowerings`` and ``compiles`` map a jitted function's name to a
    count; a name never seen reads as 0.

    >>> c = CompileCounter()
    >>> c.traces["never_called"]
    0
    """

    def __init__(self) -> None:
        self.traces: defaultdict[str, int] = defaultdict(int)
        self.lowerings: defaultdict[str, int] = defaultdict(int)
        self.compiles: defaultdict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._active = False

    def _listener(self, event: str, duration_secs: float, **kwargs: str | int) -> None:
        del duration_secs
        if event == _TRACE_EVENT:
            table = self.traces
        elif event == _LOWER_EVENT:
            table = self.lowerings
        elif event == _COMPILE_EVENT:
            table = self.compiles
        else:
            return
        name = _plain_name(str(kwargs.get("fun_name", "<unknown>")))
        with self._lock:
            table[name] += 1

    def __enter__(self) -> CompileCounter:
        if self._active:
            raise RuntimeError("compile_counter: this counter is already active")
        self._active = True
        monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._active = False
        monitoring.unregister_event_duration_listener(self._listener)

    def __repr__(self) -> str:
        return (
            f"CompileCounter(traces={dict(self.traces)}, "
            f"compiles={dict(self.compiles)})"
        )


def compile_counter() -> CompileCounter:
    """Return a context manager counting traces and compiles per jitted function name.

    >>> import jax, jax.numpy as jnp
    >>> f = jax.jit(lambda x: x + 1)
    >>> with compile_counter() as c:
    ...     _ = f(jnp.zeros(2))
    >>> c.compiles["<lambda>"]
    1
    """
    return CompileCounter()
