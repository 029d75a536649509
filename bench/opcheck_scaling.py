"""opcheck's default checks on image-sized float64 samples: seconds and peak RSS (issue 15).

The op is the custom-ops tutorial's ``crop`` (a host op: NumPy slicing, a fake, a
backward that pads the gradient back) and a traceable pointwise op with
``register_autograd``, both on a ``3 x S x S`` float64 image.  Each measurement runs in
a fresh subprocess, so its peak resident set size is its own.  When torch is installed,
``torch.library.opcheck`` runs on the same sample (a ``torch.library.custom_op`` crop
with ``register_autograd``) for comparison.

    python bench/opcheck_scaling.py            # sizes 91 and 512
    python bench/opcheck_scaling.py --sizes 512
"""

# No ``from __future__ import annotations``: torch.library.custom_op reads the annotations of
# functions defined inside run_torch, which string annotations could not resolve.
import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOX = (8, 16, 64, 32)  # top, left, height, width of the crop (clipped to the image)


def _box(size: int) -> tuple[int, int, int, int]:
    top, left, h, w = BOX
    return top, left, min(h, size - top), min(w, size - left)


def _peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_jaxops(size: int, which: str) -> dict[str, float | str]:
    """opcheck's default on a 3 x size x size float64 sample, in this process."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import jaxops

    top, left, h, w = _box(size)
    if which == "crop":

        @jaxops.custom_op("bench_oc::crop", mutates_args=(), host=True)
        def op(pic: jax.Array, box: list[int]) -> jax.Array:
            t, lft, hh, ww = box
            return np.ascontiguousarray(pic[:, t : t + hh, lft : lft + ww])

        @op.register_fake
        def _(pic: jax.Array, box: list[int]) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct((pic.shape[0], box[2], box[3]), pic.dtype)

        def setup_context(ctx: object, inputs: tuple, output: object) -> None:
            ctx.shape = inputs[0].shape  # type: ignore[attr-defined]
            ctx.box = inputs[1]  # type: ignore[attr-defined]

        def backward(ctx: object, g: jax.Array) -> tuple[jax.Array, None]:
            t, lft, hh, ww = ctx.box  # type: ignore[attr-defined]
            grad = jnp.zeros(ctx.shape, g.dtype).at[:, t : t + hh, lft : lft + ww].set(g)  # type: ignore[attr-defined]
            return grad, None

        op.register_autograd(backward, setup_context=setup_context)
        args: tuple = (None, [top, left, h, w])
    else:

        @jaxops.custom_op("bench_oc::softplus", mutates_args=())
        def op(x: jax.Array) -> jax.Array:
            return jnp.logaddexp(x, 0.0)

        def setup_context(ctx: object, inputs: tuple, output: object) -> None:
            ctx.save_for_backward(inputs[0])  # type: ignore[attr-defined]

        def backward(ctx: object, g: jax.Array) -> jax.Array:
            (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
            return g * jax.nn.sigmoid(x)

        op.register_autograd(backward, setup_context=setup_context)
        args = (None,)
    pic = np.random.default_rng(0).standard_normal((3, size, size))
    args = (jnp.asarray(pic, jnp.float64), *args[1:])
    t0 = time.perf_counter()
    result = jaxops.opcheck(op, args)
    seconds = time.perf_counter() - t0
    assert all(v == "SUCCESS" for v in result.values()), result
    return {"seconds": seconds, "peak_rss_mib": _peak_rss_mib()}


def run_torch(size: int, which: str) -> dict[str, float | str]:
    """torch.library.opcheck on the same sample, in this process."""
    import torch

    top, left, h, w = _box(size)
    if which == "crop":

        @torch.library.custom_op("bench_oc::crop", mutates_args=())
        def op(pic: torch.Tensor, box: list[int]) -> torch.Tensor:
            t, lft, hh, ww = box
            return pic[:, t : t + hh, lft : lft + ww].clone()

        @op.register_fake
        def _(pic: torch.Tensor, box: list[int]) -> torch.Tensor:
            return pic.new_empty(pic.shape[0], box[2], box[3])

        def setup_context(ctx: object, inputs: tuple, output: object) -> None:
            ctx.shape = inputs[0].shape  # type: ignore[attr-defined]
            ctx.box = inputs[1]  # type: ignore[attr-defined]

        def backward(ctx: object, g: torch.Tensor) -> tuple[torch.Tensor, None]:
            t, lft, hh, ww = ctx.box  # type: ignore[attr-defined]
            grad = g.new_zeros(ctx.shape)  # type: ignore[attr-defined]
            grad[:, t : t + hh, lft : lft + ww] = g
            return grad, None

        op.register_autograd(backward, setup_context=setup_context)
        extra: tuple = ([top, left, h, w],)
    else:

        @torch.library.custom_op("bench_oc::softplus", mutates_args=())
        def op(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.softplus(x)

        @op.register_fake
        def _(x: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(x)

        def setup_context(ctx: object, inputs: tuple, output: object) -> None:
            ctx.save_for_backward(inputs[0])  # type: ignore[attr-defined]

        def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
            (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
            return g * torch.sigmoid(x)

        op.register_autograd(backward, setup_context=setup_context)
        extra = ()
    gen = torch.Generator().manual_seed(0)
    pic = torch.randn(3, size, size, dtype=torch.float64, generator=gen, requires_grad=True)
    t0 = time.perf_counter()
    torch.library.opcheck(op, (pic, *extra))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mib": _peak_rss_mib()}


def _child(candidate: str, size: int, which: str) -> dict[str, float | str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", candidate, "--sizes", str(size), "--ops", which]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="91,512", help="comma-separated image sizes S (3 x S x S)")
    parser.add_argument("--ops", default="crop,softplus", help="comma-separated: crop, softplus")
    parser.add_argument("--child", choices=["jaxops", "torch"], help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    sizes = [int(s) for s in ns.sizes.split(",")]
    ops = [o.strip() for o in ns.ops.split(",")]
    if ns.child:
        run = run_jaxops if ns.child == "jaxops" else run_torch
        print(json.dumps(run(sizes[0], ops[0])))
        return 0
    have_torch = importlib.util.find_spec("torch") is not None
    print("opcheck default checks on a 3 x S x S float64 sample (fresh process each; peak RSS of that process)")
    print(f"{'op':<9} {'S':>4} {'jaxops s':>9} {'jaxops MiB':>11} {'torch s':>8} {'torch MiB':>10}")
    for which in ops:
        for size in sizes:
            j = _child("jaxops", size, which)
            t = _child("torch", size, which) if have_torch else {"error": "torch not installed"}

            def cell(r: dict[str, float | str], key: str, fmt: str) -> str:
                return format(r[key], fmt) if key in r else "error"

            print(
                f"{which:<9} {size:>4} {cell(j, 'seconds', '9.2f')} {cell(j, 'peak_rss_mib', '11.0f')} "
                f"{cell(t, 'seconds', '8.2f')} {cell(t, 'peak_rss_mib', '10.0f')}",
                flush=True,
            )
            for label, r in (("jaxops", j), ("torch", t)):
                if "error" in r:
                    print(f"    {label}: {r['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
