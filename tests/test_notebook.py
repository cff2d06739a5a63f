"""The notebook runs top to bottom on a real (tiny) run directory."""

from __future__ import annotations

from tests.conftest import REPO, requires

NOTEBOOK = REPO / "notebooks" / "explore_run.ipynb"


def test_explore_run_notebook_executes(tiny_run, monkeypatch):
  nbformat = requires("nbformat")
  nbclient = requires("nbclient")
  requires("ipykernel")
  workdir, results = tiny_run
  monkeypatch.setenv("DIGITS_WORKDIR", str(workdir))  # the kernel inherits the environment
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # Run from notebooks/, as Jupyter does when the notebook is opened there.
  nbclient.NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
  ).execute()

  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 5  # curves, confusion matrix, mistakes, predictions, reliability
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
  assert str(workdir) in text
  assert "weighted avg" in text and "ECE" in text  # classification report, calibration
  assert "| model | conv2_dense64 |" in markdown
  assert f"| test_accuracy | {results['test_accuracy']:.6g} |" in markdown
