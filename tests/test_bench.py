"""bench/train_speed.py, which bench/gpu_checks.sh runs on a lent GPU, run briefly here on its default model (ViT-T/16,
the paper recipe), so that a script that no longer builds what it times fails in CI rather than in counted device
time: it read `model.vit`, renamed `model.config` a day after it was written, and its first GPU call would have
failed."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_train_speed_times_its_default_model_and_writes_its_table(tmp_path):
    done = subprocess.run([sys.executable, "bench/train_speed.py", "--device", "cpu", "--configs", "vanilla,lrd_vcon",
                           "--steps", "1", "--repeats", "1", "--warmup", "1", "--batch", "8", "--images", "64",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (written,) = tmp_path.glob("train_speed-cpu-vit-tiny-scratch-*.json")
    result = json.loads(written.read_text())
    assert [r["config"] for r in result["rows"]] == ["vanilla", "lrd_vcon"]
    assert all(r["e2e"] > 0 and r["step"] > 0 for r in result["rows"])
    assert "| lrd_vcon | fp32 |" in result["table"]
