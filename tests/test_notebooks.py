"""The quick-start notebook runs from top to bottom (on the tiny preset) and is what its generator writes."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
MODELS = ["bookrec", "Popularity", "EASE", "ALS"]


def test_notebook_is_generated_by_its_script():
    build = runpy.run_path(str(ROOT / "scripts" / "make_notebook.py"))["build"]
    assert nbformat.read(NOTEBOOK, as_version=4) == build(), "run: python scripts/make_notebook.py"


def test_quickstart_notebook_runs_on_tiny(tmp_path, monkeypatch):
    # A kernel spec for this interpreter: a "python3" spec found elsewhere on the machine could
    # start a Python without bookrec installed.
    spec = tmp_path / "kernels" / "bookrec-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "bookrec tests", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("NOTEBOOK_PRESET", "tiny")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError, with the failing cell's traceback, on the first error.
    NotebookClient(nb, kernel_name="bookrec-test", timeout=120,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "every code cell ran"
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]

    table = next(cell for cell in code if "comparison = " in cell.source)
    text = next(out.data["text/plain"] for out in table.outputs if out.output_type == "execute_result")
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(\S+)\s+([\d.]+)\s+([\d.]+)\s*$", text, flags=re.M)}
    assert list(rows) == MODELS
    assert "recall@10" in text and "ndcg@10" in text
    for name, (recall, ndcg) in rows.items():
        assert 0 < recall <= 1 and 0 < ndcg <= 1, name

    images = [out for cell in code for out in cell.outputs if "image/png" in out.get("data", {})]
    assert len(images) == 3, "the comparison, the intervals and the traces"
