"""Every notebook in notebooks/ runs top to bottom (in fast mode) and saves the figures it promises.

A new notebook is picked up by the glob below: it must read TFSPARSE_FAST in its first cell to
shrink epochs and data, and save any figure the README shows with `savefig` under `figures/`.
"""

import os
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _figures(notebook) -> list[str]:
    """The PNG files a notebook's code saves under FIGURES."""
    source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    return re.findall(r'savefig\(os\.path\.join\(FIGURES, "([^"]+\.png)"\)', source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_in_fast_mode_and_saves_its_figures(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    assert "TFSPARSE_FAST" in notebook.cells[[c.cell_type for c in notebook.cells].index("code")].source
    monkeypatch.setenv("TFSPARSE_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert errors == []
    for name in _figures(notebook):
        figure = tmp_path / "figures" / name
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert figure.stat().st_size > 10_000, name  # axes, curves and labels, not an empty canvas


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_the_notebooks_the_readme_promises_are_there():
    assert {
        "01_quickstart",
        "02_structured_pruning",
        "03_choosing_sparsity",
        "04_compress_for_mobile",
        "05_migrating_from_tfmot",
    } <= {path.stem for path in NOTEBOOKS}
