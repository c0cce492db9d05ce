"""The notebooks: committed with the outputs of a real run, and executed here with the CI budget.

Each notebook has a cell tagged ``parameters`` (``BUDGET = "full"``, ``OUT = ...``); like
papermill, the test inserts a cell after it that sets ``BUDGET = "ci"`` and points ``OUT`` at a
temporary directory, then runs every cell with nbclient. ``bnn_uncertainty.ipynb`` is tested with
the Bayesian models.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
# notebook -> files its CI run must write under OUT
NOTEBOOKS = {
    "exploration_and_preprocessing": ("sentiment/eda.json", "digits/eda.json",
                                      "fashion_mnist/eda.json", "kernels_china.png",
                                      "kernels_fashion.png", "augmentations.png"),
    "interpretability": ("galleries/gallery.json", "galleries/wrong.png",
                         "galleries/uncertain.png", "galleries/correct.png"),
    "model_comparison": ("comparison.md", "comparison.csv", "accuracy_vs_latency.png",
                         "sizes.png", "training_curves.png"),
}
# Notebooks committed with the outputs of a shorter budget than "full": the cell after their
# parameters (tagged injected-parameters, as papermill leaves it) names that budget.
SHORT_RUN_NOTEBOOKS = {
    "detection": ("yolov3_tiny-shapes/detection_report.json", "yolov3_tiny-shapes/pr_curves.png",
                  "yolov3_tiny-shapes/gallery.png", "yolov3_tiny-shapes/export_report.json",
                  "yolov3_tiny-shapes/tflite/yolov3_tiny_int8.json", "scene_detections.png",
                  "scene_int8.png"),
}

# Notebooks that show Fashion-MNIST images in every budget
NEEDS_FASHION_MNIST = ("exploration_and_preprocessing",)


def _read(name: str):
    import nbformat

    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebook_holds_the_outputs_of_a_full_run(name):
    nb = _read(name)
    cells = _code_cells(nb)
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'BUDGET = "full"' in params[0].source
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in cells)
    counts = [c.execution_count for c in cells]
    assert all(counts) and counts == sorted(counts), "run top to bottom in one kernel"
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    for c in cells:
        # the library holds the logic: no functions or classes defined in a notebook
        assert not any(line.startswith(("def ", "class ")) for line in c.source.splitlines())


def test_model_comparison_table_in_the_notebook_is_the_readme_table():
    nb = _read("model_comparison")
    shown = [o["data"]["text/markdown"] for c in _code_cells(nb) for o in c.outputs
             if "text/markdown" in o.get("data", {})]
    assert len(shown) == 1
    rows = [line for line in shown[0].splitlines() if line.startswith("| ")][1:]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == [f"{m}-fashion_mnist" for m in ("seed_cnn", "lenet", "small_cnn", "vgg_mini",
                                                     "resnet20", "bnn_cnn")]
    readme = (NOTEBOOK_DIR.parent / "README.md").read_text()
    for row in rows:
        assert row in readme


def test_detection_notebook_says_which_budget_produced_its_outputs():
    import re

    nb = _read("detection")
    cells = _code_cells(nb)
    params = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'BUDGET = "full"' in cells[params[0]].source
    injected = [i for i, c in enumerate(cells)
                if "injected-parameters" in c.metadata.get("tags", [])]
    budget = "full"
    if injected:
        assert injected == [params[0] + 1]
        budget = re.search(r'BUDGET = "(\w+)"', cells[injected[0]].source).group(1)
    notes = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert any(f'BUDGET = "{budget}"' in n and "load average" in n for n in notes)
    counts = [c.execution_count for c in cells]
    assert all(counts) and counts == sorted(counts), "run top to bottom in one kernel"
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4  # PR, gallery, 2 scenes
    text = "".join(o.get("text", "") for o in outputs)
    assert "mAP@0.5" in text and "tflite-int8" in text and "object(s)" in text
    for c in cells:
        assert not any(line.startswith(("def ", "class ")) for line in c.source.splitlines())


@pytest.mark.notebooks
@pytest.mark.parametrize("name", sorted({**NOTEBOOKS, **SHORT_RUN_NOTEBOOKS}))
def test_notebook_runs_with_the_ci_budget(name, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    if name in NEEDS_FASHION_MNIST:
        from conftest import require_fashion_mnist

        require_fashion_mnist()
    nb = _read(name)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    index = next(i for i, c in enumerate(nb.cells)
                 if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(f'BUDGET = "ci"\nOUT = {json.dumps(str(tmp_path))}')
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    errors = [o for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors
    for rel in {**NOTEBOOKS, **SHORT_RUN_NOTEBOOKS}[name]:
        assert (tmp_path / rel).is_file(), rel
