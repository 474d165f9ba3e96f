"""The quickstart notebook runs end to end (so it cannot rot)."""

import os

import nbformat
import pytest

from conftest import ROOT

nbclient = pytest.importorskip("nbclient")


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path):
  nb = nbformat.read(os.path.join(ROOT, "colabs", "quickstart.ipynb"), as_version=4)
  params = nb.cells[1]
  assert "PRETRAIN_STEPS" in params.source
  params.source = (f"PRETRAIN_STEPS = 200\nFINETUNE_STEPS = 40\nWORKDIR = '{tmp_path}/colab'\n")
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(ROOT, "colabs")}})
  client.execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "test accuracy:" in outputs
  acc = float(outputs.split("test accuracy: ")[1].split()[0])
  assert acc > 0.4   # 240 steps of the quickstart ViT: far above chance (0.1)
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) == 2   # the prediction grid and the confusion matrix
