"""The sensitivity scan: its scores against compressing each group by hand, its costs against a run's figures, the
proxy against its formula and its agreement figure, the budget and candidates refused before any forward pass, and
the written recipe run by run.py as it is."""
import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, make_config, requires_fashion_mnist, run_py, tiny_vit

from vcon import LowRank, Prune, Quant, Recipe, compress_
from vcon.app import identity
from vcon.app import scan as app
from vcon.compression.none import NoCompression
from vcon.core import scan, targets
from vcon.errors import ConfigError

CANDIDATES = {"dense": NoCompression(), "prune": Prune(ratio=0.9), "binary": Quant(bits=1), "rank 4": LowRank(rank=4)}


def tiny():
    """tiny_vit in eval mode, its target names, a fixed batch and the mean loss on it."""
    net = tiny_vit().eval()
    names = list(targets.matching(net, targets.in_blocks(net)))
    torch.manual_seed(1)
    x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 4, (64,))

    @torch.no_grad()
    def loss(model):
        return float(F.cross_entropy(model(pixel_values=x).logits, y))

    def batch(i):
        return lambda model: F.cross_entropy(model(pixel_values=x[i:i + 16]).logits, y[i:i + 16])

    return net, names, loss, [batch(i) for i in range(0, 64, 16)]


def test_groups_are_readable_and_exact():
    net, names, _, _ = tiny()
    parts = scan.groups_of(net, names, "block-part")
    assert list(parts) == [f"block{i}-{part}" for i in range(3) for part in ("attention", "mlp")]
    assert parts["block1-mlp"] == ["vit.layers.1.mlp.fc1", "vit.layers.1.mlp.fc2"]
    assert list(scan.groups_of(net, names, "block")) == ["block0", "block1", "block2"]
    layers = scan.groups_of(net, names, "layer")
    assert len(layers) == len(names) and layers["block2-attention-q_proj"] == ["vit.layers.2.attention.q_proj"]
    with pytest.raises(ConfigError, match="scan.per='blocks' is not allowed: expected one of block-part, block"):
        scan.groups_of(net, names, "blocks")


def test_scores_are_those_of_compressing_each_group_alone_by_hand():
    net, names, loss, _ = tiny()
    groups = scan.groups_of(net, names, "block-part")
    before = copy.deepcopy(net.state_dict())
    scores = scan.score(net, groups, CANDIDATES, loss, progress=False)
    dense = loss(net)
    assert scores.dense_loss == dense
    for group, members in groups.items():
        assert scores.exact[group]["dense"] == 0.0
        for label, candidate in CANDIDATES.items():
            if candidate.dense:
                continue
            by_hand = copy.deepcopy(net)
            compress_(by_hand, Recipe.of({**{name: candidate for name in members}, "_default": None}))  # one-shot
            assert scores.exact[group][label] == pytest.approx(loss(by_hand) - dense, abs=1e-6), (group, label)
    assert len({round(v, 6) for row in scores.exact.values() for v in row.values()}) > 10  # the scores differ
    assert scores.evaluations == 1 + len(groups) * 3  # the dense model once, no pass for a dense candidate
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the scanned model is left as it was
    assert set(dict(net.named_modules())) >= set(names) and not any("Blended" in type(m).__name__
                                                                     for m in net.modules())


def test_costs_are_the_figures_a_compressed_model_reports():
    net, names, _, _ = tiny()
    groups = scan.groups_of(net, names, "block")
    bits = scan.costs_of(net, groups, CANDIDATES, "bits_per_weight")
    values = scan.costs_of(net, groups, CANDIDATES, "params")
    for label, candidate in CANDIDATES.items():
        if candidate.dense:
            assert all(row[label] == 32 * scan.weights_of(net, groups[g]) for g, row in bits.items())
            continue
        figures = compress_(copy.deepcopy(net), candidate).figures()
        assert sum(row[label] for row in bits.values()) == pytest.approx(
            figures["bits_per_weight"] * figures["params_before"])
        assert sum(row[label] for row in values.values()) == figures["params_after"]


def test_the_proxy_is_half_the_fisher_weighted_squared_change_and_its_agreement_is_measured():
    net, names, loss, batches = tiny()
    groups = scan.groups_of(net, names, "block-part")
    fisher = scan.fisher_of(net, names, batches, 16)
    # the Fisher by hand: the mean over the batches of each weight's squared gradient, times the batch size
    weight = net.get_submodule(names[0]).weight
    grads = [torch.autograd.grad(b(net), weight)[0] for b in batches]
    assert torch.allclose(fisher[names[0]], 16 * torch.stack(grads).pow(2).mean(0))
    scores = scan.score(net, groups, CANDIDATES, loss, fisher, progress=False)
    members = groups["block0-attention"]
    compressed = compress_(copy.deepcopy(net), Recipe.of({**{n: Prune(ratio=0.9) for n in members}, "_default": None}))
    with torch.no_grad():
        by_hand = sum(0.5 * float((fisher[n] * (net.get_submodule(n).weight - compressed.model.get_submodule(n)
                                                                              .effective_weight()) ** 2).sum())
                      for n in members)
    assert scores.proxy["block0-attention"]["prune"] == pytest.approx(by_hand, rel=1e-5)
    low_rank = scan.compressed(net, members, LowRank(rank=4))[members[0]]  # its weight: the factors' product
    assert torch.allclose(scan.effective_weight(low_rank, 32, weight), low_rank.dense_weight(), atol=1e-6)
    weights = scan.weights_of(net, names)
    solved = scan.solve(scores, scan.costs_of(net, groups, CANDIDATES, "bits_per_weight"),
                        scan.Budget("bits_per_weight", 4.0), weights)
    proxy = solved["proxy"]
    assert proxy["pairs"] == len(groups) * 3 and -1 <= proxy["spearman"] <= 1
    assert proxy["summed_delta_loss"] == pytest.approx(scan.summed(scores.exact, proxy["chosen"]))
    assert solved["summed_delta_loss"] <= proxy["summed_delta_loss"] + 1e-12  # the exact one is optimal
    assert solved["cost"] <= 4.0 * weights


@pytest.mark.parametrize("key, value, message", [
    ("bits_per_weight", 0.5, r"bits_per_weight=0.5 is not allowed: no allocation fits it; the cheapest .* costs 1.0"),
    ("bits_per_weight", 32, r"bits_per_weight=32 is not allowed: every allocation fits it, the dearest costs 32 bits"),
    # pruning 90 % keeps the fewest values: 1024 - 922 of each of 12 attention layers, 2048 - 1843 of 6 MLP ones
    ("params", 1000, r"scan.budget.params=1000 is not allowed: no allocation fits it; the cheapest .* 2454 parameters"),
])
def test_a_budget_outside_the_allocations_is_refused(key, value, message):
    net, names, _, _ = tiny()
    groups = scan.groups_of(net, names, "block-part")
    costs = scan.costs_of(net, groups, CANDIDATES, key)
    with pytest.raises(ConfigError, match=message):
        scan.Budget(key, value).check(costs, scan.weights_of(net, names))


@pytest.mark.parametrize("overrides, message", [
    (["scan.candidates=[{name: prune, ratio: 0.9}, {name: sparsify}]"],
     r"scan.candidates.1.name='sparsify' is not allowed: expected one of chain, lrd, none, prune, quant or recipe"),
    (["scan.candidates=[{name: prune, ratio: 2}]"], r"scan.candidates.0.ratio=2 is not allowed: expected"),
    (["scan.candidates=[{name: quant, bits: 1, ratio: 0.5}]"],
     r"scan.candidates.0=quant has no setting\(s\) \['ratio'\]"),
    (["scan.candidates=[{name: quant, bits: 1}, {name: quant, bits: 1}]"], r"it repeats candidate 'binary'"),
    ([], r"scan.budget=nothing is not allowed: expected exactly one of scan.budget.bits_per_weight"),
    (["scan.budget.bits_per_weight=2", "scan.budget.params=1000"], r"scan.budget=\{'bits_per_weight': 2.0, 'par"),
    (["scan.budget.params=1000", "scan.examples=16"], r"scan.proxy_batch_size=32 is not allowed: expected at most"),
])
def test_bad_settings_are_refused_before_anything_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        app.check(make_config(*overrides))


def test_the_scan_settings_are_in_no_run_identity():
    plain = identity.run_id(make_config())
    assert identity.run_id(make_config("scan.budget.bits_per_weight=1.8", "scan.per=layer", "scan.examples=64",
                                       "scan=mixed")) == plain
    assert "scan" not in identity.identity(make_config())


def test_a_budget_no_allocation_meets_is_refused_before_a_forward_pass(monkeypatch, tmp_path):
    def no_forward_pass(*args, **kwargs):
        raise AssertionError("a forward pass before the budget was checked")

    monkeypatch.setattr(app, "val_loss", no_forward_pass)
    monkeypatch.setattr(app.data, "load", no_forward_pass)  # the skeleton suffices: nothing loads
    with pytest.raises(ConfigError, match=r"bits_per_weight=0.1 is not allowed: no allocation fits it; the cheapest"):
        app.scan(make_config("scan.budget.bits_per_weight=0.1"), tmp_path)
    with pytest.raises(ConfigError, match=r"scan candidate 'low rank 100': compression.rank=100 is not allowed"):
        app.scan(make_config("scan.budget.bits_per_weight=8", "scan.candidates=[{name: none}, {name: lrd, rank: 100}]"),
                 tmp_path)
    assert not list(tmp_path.iterdir())


SMALL = ["data.train_size=256", "data.val_size=128", "data.test_size=256", "scan.examples=128",
         "scan.candidates=[{name: none}, {name: prune, ratio: 0.9, granularity: layer}, {name: quant, bits: 1}]",
         "scan.proxy_batch_size=64"]


def scan_py(*args: str, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "vcon.app.scan", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@requires_fashion_mnist
def test_vcon_scan_refuses_in_one_line_and_leaves_no_folder(tmp_path):
    done = scan_py(*SMALL, "scan.budget.bits_per_weight=0.5", f"scan.out={tmp_path / 'scan'}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "vcon-scan: error: scan.budget.bits_per_weight=0.5 is not allowed: no allocation fits it; the cheapest (every "
        "group at its cheapest candidate) costs 1.004 bits a weight"]
    assert not (tmp_path / "scan").exists()


@pytest.mark.slow  # two processes, a scan and a run: about a minute on 2 busy cores
@requires_fashion_mnist
def test_the_written_recipe_runs_with_run_py_as_it_is(tmp_path):
    out = tmp_path / "scan"
    done = scan_py(*SMALL, "scan.budget.bits_per_weight=4", "scan.name=budget", f"scan.out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "scores.json").read_text())
    assert (out / "heatmap.png").stat().st_size > 10_000 and "| block0-attention |" in (out / "scan.md").read_text()
    assert result["forward_passes"] == result["loss_evaluations"] == 1 + 8 * 2 + 2  # dense, 8 groups x 2, 2 joint
    assert result["proxy"]["gradient_passes"] == 2 and -1 <= result["proxy"]["spearman"] <= 1
    assert result["figures"]["bits_per_weight"] <= 4 and result["cost"] <= 4 * result["weights"]
    command = f"python run.py --config-dir {out} compression=budget"
    assert command in done.stdout and result["recipe"]["command"] == command
    run = run_py("--config-dir", str(out), "compression=budget", "data.train_size=256", "data.val_size=128",
                 "data.test_size=256", "train.epochs=1", "train.batch_size=128", "vcon.epochs=0",
                 "tracking.wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'run'}")
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads((tmp_path / "run" / "results.json").read_text())["compression"]
    assert figures["bits_per_weight"] == pytest.approx(result["figures"]["bits_per_weight"])
    chosen = {group: result["candidates"][label]["name"] for group, label in result["chosen"].items()}
    assert {group: own["name"] for group, own in figures["groups"].items()} == chosen
