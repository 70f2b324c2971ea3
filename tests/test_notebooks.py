"""The notebooks run top to bottom at toy size (``DIVJAX_NOTEBOOK_SCALE=tiny``) and are committed without
outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "stragglers", "theory"])
def test_notebook_runs(name, monkeypatch):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "commit it without outputs"
    monkeypatch.setenv("DIVJAX_NOTEBOOK_SCALE", "tiny")  # the kernel inherits the environment
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors
