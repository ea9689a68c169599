"""The colab/ notebooks run top to bottom (at their smallest scale), so a broken one fails CI.

They compile identical steps many times over (RKD-SC and no-KD's student, the teacher of both
papers), each from its own jit: the kernels read conftest's XLA cache from the environment."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = os.path.join(os.path.dirname(__file__), "..", "colab")


@pytest.mark.parametrize("name", ["quickstart.ipynb", "paper_figures.ipynb"])
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
    monkeypatch.setenv("RKDSC_NOTEBOOK_SCALE", "smoke")
    monkeypatch.setenv("RKDSC_RUNS", str(tmp_path))  # No main-command export there: it trains its own.
    monkeypatch.setenv("RKDSC_EXPORT", "")
    monkeypatch.setenv("XLA_FLAGS", "")
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": os.path.abspath(os.path.join(COLAB, ".."))}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.output_type == "error"]
    assert not errors
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the notebook drew no figure"
