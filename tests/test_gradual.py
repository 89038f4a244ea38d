"""Gradual compression, the iterative baselines (``method=gradual``): each ramp at its start, middle and end, the
cubic default, whole runs through the trainer, resume mid-ramp, run identities, the logged strength, bad input."""
import dataclasses

import pytest
import torch
from conftest import QUICK, make_config, requires_fashion_mnist, tiny_vit
from torch import nn

from vcon import Chain, LowRank, Prune, Quant, Schedule, compress_
from vcon.app import identity, job
from vcon.compression import ModuleCompression
from vcon.errors import ConfigError
from vcon.method import Gradual
from vcon.method.blend import BlendedBranches
from vcon.method.gradual import GradualBranches
from vcon.train import checkpoint
from vcon.train import loop as train

Q = 4



def run_weights(controller) -> list[torch.Tensor]:
    """The weight each compressed layer runs now, as the model's forward computes it."""
    out = []
    hooks = [controller.model.get_submodule(n).register_forward_hook(
        lambda m, args, y: out.append(m.effective_weight().detach())) for n in controller.names]
    with torch.no_grad():
        controller.model(pixel_values=torch.randn(1, 1, 16, 16))
    for hook in hooks:
        hook.remove()
    return out


def zeros(weights):
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def changed(dense):
    def fraction(weights):  # entries no longer equal to the latent weight: quantized ones
        return sum(int((w != d).sum()) for w, d in zip(weights, dense)) / sum(w.numel() for w in weights)
    return fraction


def ranks(weights):
    return [int(torch.linalg.matrix_rank(w)) for w in weights]


@pytest.mark.parametrize("compression, measure, expected", [
    (Prune(ratio=0.8), zeros, (0.0, 0.4, 0.8)),
    (Prune(ratio=0.6, granularity="row"), zeros, (0.0, 0.3, 0.6)),
    (Prune(ratio=0.5, granularity="2:4"), zeros, (0.0, 0.25, 0.5)),  # keeps 4, 3, then 2 of every 4
    (Quant(bits=1), "changed", (0.0, 0.5, 1.0)),
    (Quant(bits=4), "changed", (0.0, 0.5, 1.0)),
    (LowRank(rank=4), ranks, ([32] * 12, [18] * 12, [4] * 12)),  # full rank 32, halfway 18, then the target
], ids=["prune", "prune row", "prune 2:4", "binary", "4-bit", "low rank"])
def test_each_ramp_at_its_start_middle_and_end(compression, measure, expected):
    controller = compress_(tiny_vit(2), compression, schedule=Schedule("linear", Q), method=Gradual(svd_every=1))
    dense = [w.clone() for w in run_weights(controller)]  # β = 1: the latent weights themselves
    measure = changed(dense) if measure == "changed" else measure
    seen = []
    for step in range(Q + 1):
        if step in (0, Q // 2):
            seen.append(measure(run_weights(controller)))
        if step < Q:
            controller.step()
    if isinstance(compression, LowRank):  # at β = 0 the factors themselves run
        seen.append([int(torch.linalg.matrix_rank(controller.model.get_submodule(n).compressed.dense_weight()))
                     for n in controller.names])
        assert not any(isinstance(m, GradualBranches) and m.original is not None for m in controller.model.modules())
    else:
        seen.append(measure(run_weights(controller)))
    for got, want in zip(seen, expected):
        assert got == (pytest.approx(want, abs=0.01) if isinstance(want, float) else want)


def test_gradual_low_rank_trains_only_the_directions_it_runs():
    controller = compress_(tiny_vit(2), LowRank(rank=4), schedule=Schedule("linear", Q), method=Gradual(svd_every=1))
    for _ in range(Q // 2):
        controller.step()
    controller.model(pixel_values=torch.randn(8, 1, 16, 16)).logits.square().sum().backward()
    for name in controller.names:
        layer = controller.model.get_submodule(name)
        weight, grad = layer.original.weight, layer.original.weight.grad
        kept = layer.basis[:layer.compression.rank_for(*weight.shape, 0.5)]  # rows: the singular vectors run now
        inside = grad @ kept.T @ kept if weight.shape[1] <= weight.shape[0] else kept.T @ (kept @ grad)
        assert grad.abs().max() > 0 and torch.allclose(grad, inside, atol=1e-6), name  # none outside them


def test_a_binarised_part_shares_one_scale_and_the_rest_is_untouched():
    w = torch.randn(16, 32)
    half = Quant(bits=1).compress(w, strength=0.5)
    quantized = half != w
    assert int(quantized.sum()) == w.numel() // 2
    assert w.abs()[quantized].min() >= w.abs()[~quantized].max()  # the largest magnitudes go first
    assert half[quantized].abs().unique().numel() == 1  # one scale: the mean |W| of the binarised ones
    assert float(half[quantized].abs()[0]) == pytest.approx(float(w.abs()[quantized].mean()))


def test_gradual_defaults_to_zhu_and_guptas_cubic_ramp():
    cfg = make_config("method=gradual")
    assert (cfg.method.name, cfg.vcon.shape) == ("gradual", "cubic")
    assert make_config("method=gradual", "schedule=linear").vcon.shape == "linear"  # any shape may replace it
    controller = compress_(tiny_vit(2), Prune(ratio=0.9), schedule=Schedule("cubic", 10), method=Gradual())
    for t in range(10):
        assert controller.scalars()["gradual/zeros"] == pytest.approx(0.9 * (1 - (1 - t / 10) ** 3))
        controller.step()


def quick(folder, *overrides, on_epoch_end=None):
    cfg = make_config(*QUICK, "method=gradual", *overrides)
    return job.run(cfg, folder, on_epoch_end=on_epoch_end)


@requires_fashion_mnist
@pytest.mark.parametrize("overrides, check", [
    (("compression=prune",), lambda c: c["zero_fraction"] == pytest.approx(0.9, abs=1e-3)),
    (("compression=quant",), lambda c: c["bits_per_weight"] == 1 + 32 / (64 * 64 * 4 + 64 * 256 * 2) * 6),
    (("compression=lrd", "compression.rank=4", "method.svd_every=3"),
     lambda c: c["params_after"] == 4 * 4 * ((64 + 64) * 4 + (64 + 256) * 2)),
    (("compression=prune-quant",), lambda c: c["zero_fraction"] == pytest.approx(0.5, abs=1e-3)),
], ids=["prune", "binary", "low rank", "prune + binary"])
def test_each_gradual_compression_runs_end_to_end(tmp_path, overrides, check):
    results = quick(tmp_path, *overrides)
    assert results["method"] == "gradual" and results["beta"] == 0.0 and results["q_steps"] == 8
    assert results["cuda_graphs"] == 0  # never captured, even on CUDA: its shapes change every step
    assert check(results["compression"]), results["compression"]
    assert 10 < results["test_acc"] <= 100


@requires_fashion_mnist
def test_the_strength_is_logged_per_step_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    quick(tmp_path, "compression=prune", "train.epochs=2", "vcon.epochs=2")  # Q = 16 steps of the 16 run
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    zeros = {e.step: e.value for e in events.Scalars("gradual/zeros")}
    assert sorted(zeros) == list(range(1, 17))
    for step, value in zeros.items():  # logged after step t: the strength of the next step, cubic
        assert value == pytest.approx(0.9 * (1 - (1 - min(step / 16, 1)) ** 3), abs=1e-6)


@pytest.mark.slow
@requires_fashion_mnist
@pytest.mark.parametrize("overrides", [("compression=prune",), ("compression=lrd", "compression.rank=4",
                                                                  "method.svd_every=3")], ids=["prune", "low rank"])
def test_a_run_resumed_mid_ramp_ends_like_an_uninterrupted_one(tmp_path, overrides):
    overrides = (*overrides, "train.epochs=3", "vcon.epochs=2")  # interrupted after epoch 1 of a 2-epoch ramp

    class Interrupted(Exception):
        pass

    def stop(epoch):
        if epoch == 1:
            raise Interrupted

    whole = quick(tmp_path / "whole", *overrides)
    with pytest.raises(Interrupted):
        quick(tmp_path / "split", *overrides, on_epoch_end=stop)
    resumed = quick(tmp_path / "split", *overrides)
    assert (resumed["step"], resumed["beta"]) == (whole["step"], whole["beta"])
    a, b = checkpoint.load(tmp_path / "whole")["model"], checkpoint.load(tmp_path / "split")["model"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["test_acc"] == whole["test_acc"]


def test_run_identities_differ_between_methods_but_not_for_one_shot():
    vcon, gradual = make_config(), make_config("method=gradual")
    assert identity.run_id(vcon) != identity.run_id(gradual)
    assert "prune-gradual-q3" in identity.run_id(gradual) and "gradual" not in identity.run_id(vcon)
    assert identity.run_id(make_config("method=gradual", "vcon.epochs=0")) == identity.run_id(
        make_config("vcon.epochs=0"))  # Q = 0 is the same one-shot run for both
    assert identity.run_id(make_config("method=gradual", "method.svd_every=5")) != identity.run_id(gradual)


@pytest.mark.parametrize("overrides, message", [
    (("compression=none", "method=gradual"), "method=gradual is not allowed with compression=none"),
    (("method=gradual", "method.svd_every=0"), "method.svd_every=0 is not allowed: expected an integer >= 1"),
    (("method=gradual", "+method.speed=2"), r"method=gradual has no setting\(s\) \['speed'\]"),
    (("method=gradual", "train.cuda_graph=true", "device=cpu"), "train.cuda_graph=true is not allowed"),
])
def test_bad_gradual_settings_are_refused_before_anything_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        job.check(make_config(*QUICK, *overrides))


def test_a_target_rank_the_ramp_cannot_reach_is_refused():
    with pytest.raises(ConfigError, match="compression.rank=40 is not allowed: expected at most 32"):
        compress_(tiny_vit(2), LowRank(rank=40), schedule=Schedule("cubic", Q), method=Gradual())


def test_gradual_with_cuda_graph_auto_is_never_captured():
    from vcon.train import step as train_step

    cfg = make_config(*QUICK, "method=gradual", "train.cuda_graph=auto")
    controller, pipeline = train.build_model(cfg, Prune(ratio=0.9), 10, torch.device("cpu"), Schedule("cubic", 8),
                                             Gradual())
    step = train_step.build_step(controller.model, pipeline, cfg.train, 8, 16, torch.device("cpu"),
                                 beta=controller.beta, capturable=False)
    assert step.captured is None


def test_prune_quant_ramps_both_together():
    chain = Chain(steps=[{"name": "prune", "ratio": 0.5}, {"name": "quant", "bits": 1}])
    controller = compress_(tiny_vit(2), chain, schedule=Schedule("linear", Q), method=Gradual())
    controller.step()
    controller.step()
    assert controller.scalars() == {"vcon/beta": 0.5, "gradual/strength": 0.5, "gradual/zeros": 0.25,
                                    "gradual/binarised": 0.5}
    assert zeros(run_weights(controller)) == pytest.approx(0.25, abs=0.01)


@dataclasses.dataclass
class Halve(ModuleCompression):
    """A module compression of the test's own (not registered): g is f at half its weight."""

    name = "halve"

    def build(self, linear: nn.Linear) -> nn.Linear:
        g = nn.Linear(linear.in_features, linear.out_features)
        with torch.no_grad():
            g.weight.copy_(linear.weight / 2)
            g.bias.copy_(linear.bias)
        return g


@dataclasses.dataclass
class HalveGrowingIn(Halve):
    """The same, with a gradual form of its own: here it simply blends the branches as β falls."""

    def grow_in(self, linear: nn.Linear, beta) -> nn.Module:
        return BlendedBranches(linear, self.build(linear), beta)


def test_a_module_compression_without_a_gradual_form_is_refused_before_the_model_changes():
    model = tiny_vit(2)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"method=gradual is not allowed with compression=halve: Halve has no "
                                          r"gradual form .*allowed: method=vcon"):
        compress_(model, Halve(), schedule=Schedule("linear", Q), method=Gradual())
    assert model.state_dict().keys() == dense.keys() and all(torch.equal(v, dense[k]) for k, v in
                                                             model.state_dict().items())
    vcon = compress_(tiny_vit(2), Halve(), schedule=Schedule("linear", Q))  # method=vcon needs nothing more
    assert all(type(vcon.model.get_submodule(n)) is BlendedBranches for n in vcon.names)


def test_a_module_compression_grows_in_as_its_grow_in_says():
    controller = compress_(tiny_vit(2), HalveGrowingIn(), schedule=Schedule("linear", Q), method=Gradual())
    layers = [controller.model.get_submodule(n) for n in controller.names]
    assert all(type(layer) is BlendedBranches for layer in layers)
    x = torch.randn(2, 1, 16, 16)
    for _ in range(Q):
        controller.step()
    assert all(layer.original is None for layer in layers)
    model = controller.finalize()
    with torch.no_grad():
        assert all(torch.equal(model.get_submodule(n).weight, layer.compressed.weight)
                   for n, layer in zip(controller.names, layers))
        model(pixel_values=x)
