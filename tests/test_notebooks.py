"""Execute every notebook in ``notebooks/`` top to bottom (nbclient, kernel ``python3``).

Also checks that the checked-in notebooks are exactly what ``notebooks/build.py``
writes (so they carry no outputs and nobody edited them by hand).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["quickstart.ipynb", "porting_from_pytorch.ipynb", "planning.ipynb", "equinox_training.ipynb"]


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outputs(nb: nbformat.NotebookNode) -> str:
    """The cells' text outputs. Consecutive stream chunks are joined as printed: the kernel
    flushes stdout on a timer, so on a loaded machine one ``print`` can arrive in two chunks."""
    texts: list[str] = []
    for cell in nb.cells:
        stream = None  # the name ("stdout"/"stderr") of the stream output just before
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                if stream == out.get("name"):
                    texts[-1] += out["text"]
                else:
                    texts.append(out["text"])
                stream = out.get("name")
                continue
            stream = None
            if "data" in out and "text/plain" in out["data"]:
                texts.append(out["data"]["text/plain"])
    return "\n".join(texts)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_built_and_stripped(name: str) -> None:
    build = _build_module()
    assert sorted(build.NOTEBOOKS) == sorted(NAMES)
    text = (NOTEBOOKS / name).read_text()
    assert text == build.render(name), "run python notebooks/build.py"
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None


def _execute(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


def test_quickstart_executes() -> None:
    text = _outputs(_execute("quickstart.ipynb"))
    assert "(Tensor x, Tensor y, float alpha=1.0) -> Tensor" in text
    assert "RuntimeError: quick::np_sin: there is no fake impl registered for this op" in text
    assert "with the rule:  [(4, 3)] batch size 4" in text
    assert "warning: quick::np_relu: vmap of this host op calls its kernel once per example" in text
    assert "warnings with a rule: 0" in text
    assert "returned: [0. 1. 2.]  out itself: [0. 0. 0.]" in text
    assert "test_autograd_registration -> opcheck(quick::np_square) failed test_autograd_registration" in text
    assert "traces 1 compiles 1" in text


def test_porting_executes() -> None:
    text = _outputs(_execute("porting_from_pytorch.ipynb"))
    has_torch = importlib.util.find_spec("torch") is not None
    assert f"torch available: {has_torch}" in text
    assert text.count("gradients agree with PyTorch") == (2 if has_torch else 0)
    assert "jaxops accepted: (Tensor x, SymInt n, float alpha=1.0) -> Tensor" in text


def test_planning_executes() -> None:
    nb = _execute("planning.ipynb")
    text = _outputs(nb)
    assert "planned 99 op calls" in text
    assert "block 11     192.0 MiB" in text
    assert "99 forward op calls; 198 with the backward" in text
    assert "99 forward and 99 backward records" in text
    assert "symbolic peak of the gradient: 1104*b*s^2 + 1054380*b*s + 10*s^2 + 585575424" in text
    assert "peak live bytes 16.2 GiB at step 164 of 289 (backward" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # per layer / per sequence length, and memory over the program


def test_equinox_training_executes() -> None:
    text = _outputs(_execute("equinox_training.ipynb"))
    assert "eqxdemo::dense (Tensor x, Tensor w, Tensor b) -> Tensor" in text
    assert "step traced 1 compiled 1" in text
    assert "gradients equal the plain twin: True" in text
    first, last = (float(v) for v in text.split("loss ")[1].split()[0:3:2])
    assert last < 0.5 * first
    assert "peak live bytes:" in text
