"""bench/smoke.py, the first thing a lent GPU machine runs, here on the CPU as its dry run, importing only what that
machine's image has (bench/gpu_image/sitecustomize.py, with hydra, omegaconf and antlr4 carried as bench/gpu_prepare.sh
carries them): a run path that comes to need a package the image lacks fails here, not in counted device time."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import antlr4
import hydra
import omegaconf
import pytest
from conftest import ROOT, requires_fashion_mnist


def gpu_image_env(tmp_path: Path) -> dict:
    pydeps = tmp_path / "pydeps"
    for package in (hydra, omegaconf, antlr4):
        shutil.copytree(Path(package.__file__).parent, pydeps / package.__name__,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "bench" / "gpu_image"), str(pydeps), str(ROOT)]),
            "VCON_PYDEPS": str(pydeps)}


@pytest.mark.slow
@requires_fashion_mnist
def test_the_smoke_paths_run_with_only_the_gpu_images_packages(tmp_path):
    env = gpu_image_env(tmp_path)
    hidden = subprocess.run([sys.executable, "-c", "import hydra; print(hydra.__file__); import wandb"], env=env,
                            capture_output=True, text=True)
    assert hidden.returncode != 0 and "No module named 'wandb'" in hidden.stderr  # the image's lack is real here
    assert hidden.stdout.startswith(str(tmp_path / "pydeps"))  # and the carried copy is the one imported

    done = subprocess.run([sys.executable, "bench/smoke.py", "--device", "cpu", "--only", "default,streamed",
                           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--timeout", "480"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    (report,) = (tmp_path / "out").glob("smoke-cpu-*.json")
    rows = {r["path"]: r for r in json.loads(report.read_text())}
    assert {p: r["status"] for p, r in rows.items()} == {"default": "ran", "streamed": "ran"}
    assert rows["default"]["test_acc"] > 50 and rows["default"]["cuda_graphs"] == 0  # on a CPU: trained, eagerly
    assert "| default | ran |" in done.stdout
