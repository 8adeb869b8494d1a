"""The notebooks run top to bottom (quick mode: CNN_DEPTH_QUICK=1) and use only the public API."""
import ast
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import cnn_depth

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_both_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_depth_sweep.ipynb", "02_reading_reports.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs_and_imports_only_the_public_api(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.outputs and cell.execution_count is None, "store notebooks without outputs"
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnn_depth"):
                assert node.module == "cnn_depth", f"{node.module}: import from the public API only"
                assert all(a.name in cnn_depth.__all__ for a in node.names)
            assert not (isinstance(node, ast.Attribute) and node.attr in ("backward", "zero_grad")), \
                "no hand-written training loop in a notebook"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_in_quick_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_DEPTH_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert not (tmp_path / "runs").exists()  # quick mode writes to temporary folders only
