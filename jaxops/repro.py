"""``generate_repro``: a standalone script that re-runs one ``opcheck`` check.

PyTorch's ``torch.testing._internal.optests.generate_repro`` for jaxops.  When a check
fails in a large test suite, the script isolates it: one op, one set of inputs, one
check.  Small arrays are written into the script as literals; with ``save_data=True``
every array is saved (exactly, any dtype) to an ``.npz`` file beside the script.

>>> import jax, jax.numpy as jnp, jaxops
>>> @jaxops.custom_op("reprodoc::twice", mutates_args=())
... def twice(x: jax.Array, k: int = 2) -> jax.Array:
...     return k * x
>>> text = jaxops.generate_repro("test_vmap", twice, (jnp.arange(3.0),), {"k": 3})
>>> print(text.splitlines()[0])
# repro_reprodoc_twice_test_vmap.py: re-runs opcheck's test_vmap on reprodoc::twice
>>> for line in text.splitlines()[-6:-3]:
...     print(line)
args = (jnp.asarray([0.0, 1.0, 2.0], dtype=jnp.float32),)
kwargs = {'k': 3}
jaxops.opcheck(op, args, kwargs, test_utils='test_vmap')
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxops import registry as _registry

#: Arrays with at most this many elements are written into the script as literals
#: (with ``save_data=False``); larger ones become a placeholder of the right shape.
INLINE_LIMIT = 1024

_RULE = "# " + "=" * 57


def _file_stem(op_name: str, check: str) -> str:
    return "repro_" + re.sub(r"[^A-Za-z0-9_]+", "_", f"{op_name}_{check}").strip("_")


def _op_expression(op: Any) -> str:
    ns, _, rest = op.name.partition("::")
    name, _, overload = rest.partition(".")
    return f"jaxops.ops.{ns}.{name}.{overload or 'default'}"


def _defining_modules(op: Any) -> list[str]:
    """Importable modules that registered the op's kernels (best effort, for ``import`` lines)."""
    import inspect

    mods: list[str] = []
    table = getattr(op, "kernels", None)
    for _key, kernel in (table.items() if table is not None else []):
        fn = inspect.unwrap(getattr(kernel, "fn", None) or (lambda: None))
        mod = getattr(fn, "__module__", None)
        if not mod or mod == "__main__" or mod.split(".")[0] in ("jaxops", "jax", "numpy", "custom_vjp"):
            continue
        if mod not in mods:
            mods.append(mod)
    return mods


class _Renderer:
    """Python source for argument values; arrays inline or into ``self.arrays`` (the .npz)."""

    def __init__(self, save_data: bool) -> None:
        self.save_data = save_data
        self.arrays: dict[str, np.ndarray] = {}
        self.notes: list[str] = []

    def array(self, x: Any) -> str:
        a = np.asarray(x)
        dtype = a.dtype.name
        if self.save_data:
            key = f"a{len(self.arrays)}"
            self.arrays[key] = a
            return f'jnp.asarray(data["{key}"])'
        if a.size > INLINE_LIMIT:
            self.notes.append(
                f"an argument of shape {a.shape} ({a.size} elements) is a placeholder of zeros: "
                "rerun generate_repro with save_data=True to save its values"
            )
            return f"jnp.zeros({tuple(a.shape)!r}, dtype=jnp.{dtype})"
        values = a.astype(np.float64 if a.dtype.kind == "f" or dtype == "bfloat16" else a.dtype).tolist()
        return f"jnp.asarray({values!r}, dtype=jnp.{dtype})"

    def value(self, v: Any) -> str:
        if isinstance(v, (jax.Array, np.ndarray)):
            return self.array(v)
        if isinstance(v, np.generic):
            return f"np.{v.dtype.name}({v.item()!r})"
        if isinstance(v, list):
            return "[" + ", ".join(self.value(e) for e in v) + "]"
        if isinstance(v, tuple):
            inner = ", ".join(self.value(e) for e in v)
            return f"({inner},)" if len(v) == 1 else f"({inner})"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k!r}: {self.value(e)}" for k, e in v.items()) + "}"
        if isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic)):
            return f"jnp.dtype({np.dtype(v).name!r})"
        if isinstance(v, jax.Device):
            return f"jax.devices({v.platform!r})[{v.id}]"
        if v is None or isinstance(v, (bool, int, float, complex, str)):
            return repr(v)
        self.notes.append(f"the value {v!r} has no source form here; replace its placeholder")
        return f"None  # was {type(v).__name__}: {v!r}"


def generate_repro(
    check: str,
    op: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None = None,
    *,
    save_data: bool = False,
    dry_run: bool = True,
) -> str:
    """The text of a standalone script that runs ``jaxops.opcheck(op, args, kwargs,
    test_utils=check)``.

    ``save_data=True`` saves every array argument to ``repro_<ns>_<op>_<check>.npz``
    beside the script (the script loads it); otherwise small arrays are written as
    literals.  ``dry_run=False`` writes the script (``repro_<ns>_<op>_<check>.py``) and the
    ``.npz`` into the current directory, and the returned text starts with a line naming
    them (``# written to /path/repro_....py and /path/repro_....npz``).

    >>> import jax, jax.numpy as jnp, jaxops
    >>> @jaxops.custom_op("reprodoc::neg", mutates_args=())
    ... def neg(x: jax.Array) -> jax.Array:
    ...     return -x
    >>> "jnp.asarray([1.0, 2.0], dtype=jnp.float32)" in jaxops.generate_repro(
    ...     "test_faketensor", neg, (jnp.array([1.0, 2.0]),))
    True
    """
    from jaxops.opcheck import DEFAULT_TEST_UTILS

    if check not in DEFAULT_TEST_UTILS:
        raise ValueError(
            f"generate_repro: unknown check {check!r}; expected one of {list(DEFAULT_TEST_UTILS)} "
            "(the test_utils names of jaxops.opcheck)"
        )
    the_op = _registry.as_op(op)
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"generate_repro({the_op.name}): args must be a tuple, got {type(args).__name__}")
    kwargs = dict(kwargs or {})
    stem = _file_stem(the_op.name, check)
    script_name, data_name = f"{stem}.py", f"{stem}.npz"
    render = _Renderer(save_data)
    args_src = render.value(tuple(args))
    kwargs_src = render.value(kwargs)

    lines = [
        f"# {script_name}: re-runs opcheck's {check} on {the_op.name}"
        + (f" (data: {data_name})" if save_data else ""),
        _RULE,
        "# BEGIN REPRO SCRIPT",
        _RULE,
    ]
    if save_data:
        lines.append("import pathlib")
        lines.append("")
    lines += ["import jax", "import jax.numpy as jnp", "import numpy as np", "", "import jaxops"]
    modules = _defining_modules(the_op)
    lines.append("")
    lines.append(f"# Make sure the module that defines {the_op.name} is imported before looking it up")
    lines += [f"import {m}" for m in modules] or ["# import mylib.ops"]
    lines.append("")
    lines.append(f"op = {_op_expression(the_op)}")
    if save_data:
        lines.append(f'data = np.load(pathlib.Path(__file__).with_name("{data_name}"))')
    lines += [f"# NOTE: {n}" for n in render.notes]
    lines.append(f"args = {args_src}")
    lines.append(f"kwargs = {kwargs_src}")
    lines.append(f"jaxops.opcheck(op, args, kwargs, test_utils={check!r})")
    lines += [_RULE, "# END REPRO SCRIPT", _RULE]
    text = "\n".join(lines) + "\n"
    if dry_run:
        return text
    cwd = pathlib.Path(os.getcwd())
    if save_data:
        np.savez(cwd / data_name, **render.arrays)
    (cwd / script_name).write_text(text)
    written = f"# written to {cwd / script_name}" + (f" and {cwd / data_name}" if save_data else "")
    return written + "\n" + text


__all__ = ["INLINE_LIMIT", "generate_repro"]
