"""Export: real compressed storage, its loader, the round trip against the β = 0 model, and bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import QUICK, ROOT, make_config, requires_fashion_mnist
from omegaconf import OmegaConf

from vcon import compress_, data, export, model
from vcon.app import export_run, job
from vcon.compression import from_config
from vcon.data.augment import Pipeline
from vcon.errors import VconError

pytestmark = requires_fashion_mnist
FORMATS = {
    "prune 0.9": {"name": "prune", "ratio": 0.9},
    "prune row 0.5": {"name": "prune", "ratio": 0.5, "granularity": "row"},
    "prune 2:4": {"name": "prune", "ratio": 0.5, "granularity": "2:4"},
    "binary": {"name": "quant", "bits": 1},
    "4-bit": {"name": "quant", "bits": 4},
    "low rank 16": {"name": "lrd", "rank": 16},
    "prune 0.9 + binary": {"name": "chain", "steps": [{"name": "prune", "ratio": 0.9}, {"name": "quant", "bits": 1}]},
}


@pytest.fixture(scope="module")
def test_images():
    cfg = make_config(*QUICK)
    split = data.load(cfg.data).test
    pipeline = Pipeline(cfg.train.augment, 28, 1, list(cfg.model.mean), list(cfg.model.std), 10, torch.device("cpu"))
    return pipeline.eval_batch(split.inputs)["pixel_values"], split.labels


def accuracy(net, images, labels):
    with torch.inference_mode():
        logits = torch.cat([net(pixel_values=x).logits for x in images.split(256)])
    return logits, 100.0 * float((logits.argmax(-1) == labels).sum()) / len(labels)


def compressed_micro(spec):
    """The shipped vit-micro compressed one-shot: the controller of its β = 0 model."""
    controller = compress_(model.build(make_config().model, 10), from_config(spec))
    controller.model.eval()
    return controller


def assert_no_dense_copy(folder):
    """No floating-point tensor of a compressed layer is as large as its dense weight."""
    loaded = export.load(folder)
    layers = json.loads((folder / export.CONFIG).read_text())[export.KEY]["layers"]
    for name, meta in layers.items():
        module = loaded.get_submodule(name)
        assert not isinstance(module, torch.nn.Linear), name
        sizes = [t.numel() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
        assert max(sizes) < meta["shape"][0] * meta["shape"][1], (name, sizes)


@pytest.mark.parametrize("spec", FORMATS.values(), ids=FORMATS.keys())
def test_round_trip_of_each_format(tmp_path, spec, test_images):
    controller = compressed_micro(spec)
    net = controller.model
    figures = export.export_model(controller, tmp_path / "export", timing_s=0)
    loaded = export.load(tmp_path / "export")
    images, labels = (t[:256] for t in test_images)
    want, want_acc = accuracy(net, images, labels)
    got, got_acc = accuracy(loaded, images, labels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert got_acc == want_acc
    few = images[:8]  # few token rows: sparse layers take their other path (the CSR matmul)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(pixel_values=few).logits, net(pixel_values=few).logits, rtol=1e-4, atol=1e-4)
    assert_no_dense_copy(tmp_path / "export")
    b = figures["bytes"]
    assert b["compressed_layers_minimum"] <= b["compressed_layers"] <= 1.10 * b["compressed_layers_minimum"]
    assert b["file"] < b["dense_model"] and b["compressed_layers"] < b["compressed_layers_dense"]
    assert json.loads((tmp_path / "export" / export.FIGURES).read_text())["bytes"] == b
    in_memory = sum(v.numel() * v.element_size() for v in loaded.state_dict().values())
    assert in_memory < (1.02 if spec.get("ratio") == 0.5 else 0.8) * b["dense_model"]  # CSR: 8 bytes a kept weight


def test_binary_is_one_bit_per_weight_and_positions_are_near_their_entropy(tmp_path):
    controller = compressed_micro(FORMATS["binary"])
    b = export.export_model(controller, tmp_path / "b", timing_s=0)["bytes"]
    shapes = [controller.model.get_submodule(n).weight.shape for n in controller.names]
    assert b["compressed_layers"] == sum(o * i // 8 + 4 + 4 * o for o, i in shapes)  # signs, scale, bias: no more
    f = export.export_model(compressed_micro(FORMATS["prune 0.9"]), tmp_path / "p", timing_s=0)
    assert f["storage"] == {"elias-fano+fp32": 24} and f["bytes"]["ratio_to_minimum"] < 1.02
    assert f["params"]["after"] == sum(o * i - round(0.9 * o * i) for o, i in shapes)
    assert f["mult_adds_per_image"]["after"] * 10 == pytest.approx(f["mult_adds_per_image"]["before"], rel=1e-3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real short run of the shipped vit-micro, low rank, exported at its end (export=true)."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_config(*QUICK, "compression=lrd", "train.epochs=1", "export=true")
    job.run(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what Hydra leaves in a run folder
    return run_dir


def test_a_run_exports_at_its_end_and_the_export_scores_its_accuracy(run_dir, test_images):
    results = json.loads((run_dir / "results.json").read_text())
    assert results["beta"] == 0 and results["export"]["storage"] == {"low-rank factors": 24}
    assert results["export"]["latency"]["batch_64"]["exported_ms"] > 0
    assert_no_dense_copy(run_dir / "export")
    images, labels = test_images
    assert accuracy(export.load(run_dir / "export"), images, labels)[1] == results["test_acc"]


def test_vcon_export_of_a_run_folder(run_dir, tmp_path, capsys):
    assert export_run.main([str(run_dir), "--out", str(tmp_path / "again"), "--timing-s", "0"]) == 0
    assert "| bytes on disk, whole model |" in capsys.readouterr().out
    first = json.loads((run_dir / "export" / export.FIGURES).read_text())
    again = json.loads((tmp_path / "again" / export.FIGURES).read_text())
    assert again["bytes"] == first["bytes"] and again["max_abs_logit_difference"] < 1e-4
    assert json.loads((run_dir / "results.json").read_text())["export"]["folder"] == str(tmp_path / "again")
    assert export_run.main([str(run_dir), "--out", str(tmp_path / "again")]) == 2
    assert "is not empty" in capsys.readouterr().err


def copy_run(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export"))
    return copy


def dense(run_dir):
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.compression = {"name": "none"}
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")


def half_beta(path):
    state = torch.load(path, weights_only=False)
    torch.save(state | {"controller": state["controller"] | {"beta": 0.5}, "finished": False}, path)


def truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def other_seed(run_dir):
    cfg_file = run_dir / ".hydra" / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("seed: 0", "seed: 1"))


@pytest.mark.parametrize("spoil, message", [
    (lambda d: half_beta(d / "checkpoint.pt"), "at β = 0.5000, not 0"),
    (lambda d: truncate(d / "checkpoint.pt"), "damaged or cut short"),
    (lambda d: torch.save({"weights": torch.ones(1)}, d / "checkpoint.pt"), "is not a vcon checkpoint"),
    (other_seed, "checkpoint of another run"),
    (lambda d: (d / "checkpoint.pt").unlink(), "has no checkpoint.pt"),
    (lambda d: (d / "export").mkdir() or (d / "export" / "mine.txt").write_text("x"), "is not empty"),
    (dense, "nothing compressed"),
], ids=["not at beta 0", "corrupted", "foreign", "another run", "no checkpoint", "non-empty target", "dense"])
def test_bad_input_is_refused_and_nothing_is_written(run_dir, tmp_path, spoil, message):
    run_dir = copy_run(run_dir, tmp_path)
    spoil(run_dir)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    results = (run_dir / "results.json").read_text()
    with pytest.raises(VconError, match=message):  # ExportError, or CheckpointError for a foreign checkpoint
        export_run.export_run(run_dir)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (run_dir / "results.json").read_text() == results


def test_the_loader_needs_no_hydra_omegaconf_wandb_or_kornia(tmp_path):
    export.export_model(compressed_micro(FORMATS["prune 0.9 + binary"]), tmp_path / "e", timing_s=0)
    code = ("import sys\nfor m in ('hydra', 'omegaconf', 'wandb', 'kornia'): sys.modules[m] = None\n"
            "import torch\nfrom vcon.export import load\n"
            f"m = load({str(tmp_path / 'e')!r})\nprint(m(pixel_values=torch.zeros(2, 1, 28, 28)).logits.shape)")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "torch.Size([2, 10])" in done.stdout, done.stderr[-2000:]
