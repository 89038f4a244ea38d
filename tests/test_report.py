"""Results people can see: vcon-report's Markdown and PNGs, and the notebook, run headlessly on a real small sweep."""
import json
import os
import shutil
import subprocess

import pytest
from conftest import QUICK, ROOT, requires_fashion_mnist, run_py

pytestmark = [pytest.mark.slow, requires_fashion_mnist]


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """binary weights, one-shot and VCON with Q = 1 and 2 epochs, two seeds: 6 real runs logged to W&B offline."""
    root = tmp_path_factory.mktemp("sweep")
    done = run_py("-m", *QUICK, "tracking.wandb.mode=offline", "compression=quant", "vcon.epochs=0,1,2",
                  "seed=0,1", f"outputs={root}", "sweep_name=small", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "sweeps" / "small"


def test_vcon_report_writes_a_table_and_plots(small_sweep):
    done = subprocess.run(["vcon-report", str(small_sweep)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = (small_sweep / "report" / "report.md").read_text()
    assert report.count("| vit-micro | fashion-mnist |") == 3
    for png in ("accuracy_per_epoch", "gain", "accuracy_vs_q", "beta"):
        assert f"![{png}]({png}.png)" in report
        assert (small_sweep / "report" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = (small_sweep / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("model,data,compression,transition") and len(csv) == 4
    results = [json.loads(p.read_text()) for p in small_sweep.glob("*/results.json")]
    vcon_binary = [r["test_acc"] for r in results if r["compression"]["name"] == "quant" and r["q_steps"] == 8]
    mean = sum(vcon_binary) / len(vcon_binary)
    assert f"{mean:.2f} ± " in report  # the table's numbers are the runs' own


def test_report_of_a_single_run_and_of_nothing(small_sweep, tmp_path):
    one = next(small_sweep.glob("*_quant-q1_s0_*"))
    beside = tmp_path / "runs"  # the run among other run folders, one of them refused and left unfinished
    shutil.copytree(one, beside / one.name)
    shutil.copytree(one / ".hydra", beside / "refused" / ".hydra")
    one = beside / one.name
    assert subprocess.run(["vcon-report", str(one)], capture_output=True).returncode == 0
    assert (one / "report" / "accuracy_per_epoch.png").exists()
    report = (one / "report" / "report.md").read_text()
    assert report.count("| vit-micro |") == 1 and "refused" not in report and "Not finished" not in report
    empty = tmp_path / "empty"
    empty.mkdir()
    empty = subprocess.run(["vcon-report", str(empty)], capture_output=True, text=True)
    assert empty.returncode != 0 and "no finished run" in empty.stderr


def test_notebook_runs_headless_on_the_sweep(small_sweep):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "report.ipynb", as_version=4)
    os.environ["VCON_SWEEP_DIR"] = str(small_sweep)
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        del os.environ["VCON_SWEEP_DIR"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5  # accuracy per epoch, gain, accuracy against Q, beta, and the per-step W&B curves
    markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    assert markdown.count("| vit-micro |") == 3
