"""The library verb on models outside our configs: ``compress_`` and its ``Controller`` driven by a plain loop."""
import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert, tiny_vit
from torch import nn

from vcon import Chain, Controller, LowRank, Prune, Quant, Schedule, compress_
from vcon.errors import ConfigError
from vcon.method.blend import BlendedBranches, BlendedLinear


def blended(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (BlendedLinear, BlendedBranches))}


def test_the_default_choice_is_every_linear_in_the_blocks_of_a_vit_and_a_bert():
    vit = compress_(tiny_vit(), Prune(ratio=0.5), schedule=Schedule("linear", 4))
    assert len(vit.names) == 6 * 3 and set(blended(vit.model)) == set(vit.names)
    assert not any("classifier" in n or "embeddings" in n for n in vit.names)
    bert = compress_(tiny_bert(), LowRank(rank=4), schedule=Schedule("linear", 4))
    kinds = {n.split("layer.")[1].split(".", 1)[1] for n in bert.names}
    assert kinds == {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "intermediate.dense", "output.dense"} and len(bert.names) == 12
    assert not any("pooler" in n or "classifier" in n or "embeddings" in n for n in bert.names)
    x = torch.randint(0, 50, (2, 7))
    dense_logits = tiny_bert().eval()(input_ids=x).logits
    torch.testing.assert_close(bert.model.eval()(input_ids=x).logits, dense_logits)  # β = 1: still the original model


def test_a_model_without_blocks_needs_a_filter_fn():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(ConfigError, match="found no repeated blocks.*filter_fn"):
        compress_(copy.deepcopy(mlp), Quant(bits=1))
    with pytest.raises(ConfigError, match="filter_fn matches no module of this Sequential"):
        compress_(copy.deepcopy(mlp), Quant(bits=1), filter_fn=lambda module, name: name == "7")
    controller = compress_(mlp, Quant(bits=1), schedule=Schedule("linear", 2),
                           filter_fn=lambda module, name: isinstance(module, nn.Linear))
    assert controller.names == ["0", "2"]
    controller.step()
    controller.step()
    weight = mlp[0].effective_weight()
    assert float(controller.beta) == 0 and weight.unique().numel() == 2  # ±scale: binary


def train(model: nn.Module, controller: Controller, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    """A user's own loop: forward, backward, optimizer step, then the controller."""
    g = torch.Generator().manual_seed(controller.steps)
    betas = []
    for _ in range(steps):
        x = torch.randn(8, 1, 16, 16, generator=g)
        y = torch.randint(0, 4, (8,), generator=g)
        F.cross_entropy(model(pixel_values=x).logits, y).backward()
        optimizer.step()
        optimizer.zero_grad()
        controller.step(optimizer)
        betas.append(float(controller.beta))
    return betas


@pytest.mark.parametrize("compression", [LowRank(rank=4), Chain(steps=[{"name": "prune", "ratio": 0.5},
                                                                        {"name": "quant", "bits": 1}])],
                         ids=["low rank", "prune + binary"])
def test_state_dict_resumes_exactly_mid_transition_and_after_it(compression):
    """Six steps of Q = 4 straight through, against 3 steps, a save, and 3 more in a new model, controller and
    optimizer (loaded in the documented order: controller, model, optimizer)."""
    def fresh() -> tuple[nn.Module, Controller, torch.optim.Optimizer]:
        model = tiny_vit()
        controller = compress_(model, compression, schedule=Schedule("linear", 4))
        return model, controller, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, controller, optimizer = fresh()
    whole = train(model, controller, optimizer, 3) + train(model, controller, optimizer, 3)
    assert whole == [0.75, 0.5, 0.25, 0.0, 0.0, 0.0]

    first, c1, o1 = fresh()
    train(first, c1, o1, 3)
    saved = copy.deepcopy({"controller": c1.state_dict(), "model": first.state_dict(), "optimizer": o1.state_dict()})
    second, c2, o2 = fresh()
    c2.load_state_dict(saved["controller"])
    second.load_state_dict(saved["model"])
    o2.load_state_dict(saved["optimizer"])
    assert train(second, c2, o2, 3) == whole[3:]
    for (name, a), (_, b) in zip(model.state_dict().items(), second.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    if isinstance(compression, LowRank):  # the originals left model and optimizer at β = 0
        assert all(m.original is None for m in blended(second).values())
        in_optimizer = {id(p) for group in o2.param_groups for p in group["params"]}
        assert in_optimizer == {id(p) for p in second.parameters()}

    after, c3, o3 = fresh()  # a checkpoint taken after β = 0 loads into a fresh model: originals dropped first
    c3.load_state_dict(c2.state_dict(), o3)
    after.load_state_dict(second.state_dict())
    o3.load_state_dict(o2.state_dict())
    assert float(c3.beta) == 0 and c3.finished


def test_a_state_of_another_compression_or_schedule_is_refused():
    controller = compress_(tiny_vit(), Prune(ratio=0.5), schedule=Schedule("linear", 4))
    other = compress_(tiny_vit(), Prune(ratio=0.7), schedule=Schedule("linear", 4))
    with pytest.raises(ValueError, match="saved with compression"):
        other.load_state_dict(controller.state_dict())
    longer = compress_(tiny_vit(), Prune(ratio=0.5), schedule=Schedule("cosine", 8))
    with pytest.raises(ValueError, match="saved with schedule"):
        longer.load_state_dict(controller.state_dict())


def test_finalize_gives_the_beta_zero_model_and_the_export_writes_it(tmp_path):
    from vcon import export

    controller = compress_(tiny_vit(), LowRank(rank=4), schedule=Schedule("linear", 100))
    with pytest.raises(Exception, match="not 0"):
        export.export_model(controller, tmp_path / "early", timing_s=0)
    model = controller.finalize()
    assert float(controller.beta) == 0 and controller.finished and controller.steps == 100
    assert all(m.original is None for m in blended(model).values())
    figures = export.export_model(controller, tmp_path / "export", timing_s=0)
    assert figures["storage"] == {"low-rank factors": 18}
    x = torch.randn(2, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(export.load(tmp_path / "export")(pixel_values=x).logits,
                                   model.eval()(pixel_values=x).logits)


def test_one_shot_is_the_default_schedule():
    controller = compress_(tiny_vit(), LowRank(rank=4))
    assert float(controller.beta) == 0 and controller.finished
    assert all(m.original is None for m in blended(controller.model).values())


@pytest.mark.parametrize("bad, message", [
    (lambda: Schedule("sigmoid", 10), "vcon.shape='sigmoid'"),
    (lambda: Schedule("linear", -3), "vcon.steps=-3"),
    (lambda: Schedule("exp", 10, {"rate": -1.0}), "vcon.rate=-1.0"),
    (lambda: Schedule("linear", 10, {"stages": 3}), "parameters of vcon.shape=linear"),
    (lambda: compress_(tiny_vit(), LowRank(rank=99)), "compression.rank=99 is not allowed: expected at most 32"),
    (lambda: Prune(ratio=1.5), "compression.ratio=1.5"),
])
def test_bad_settings_are_refused_with_the_value_and_what_is_allowed(bad, message):
    with pytest.raises(ConfigError, match=message):
        bad()


@pytest.mark.parametrize("lost", ["schedule", "step"])
def test_a_state_missing_a_key_is_refused_naming_it(lost):
    controller = compress_(tiny_vit(), Prune(ratio=0.5), schedule=Schedule("linear", 4))
    state = {k: v for k, v in controller.state_dict().items() if k != lost}
    with pytest.raises(ValueError) as refused:
        controller.load_state_dict(state)
    assert str(refused.value) == (f"this controller state lacks ['{lost}']: it is not a Controller.state_dict() (its "
                                  f"keys: {sorted(state)})")
    older = {k: v for k, v in controller.state_dict().items() if k != "method"}  # saved before methods were named
    controller.load_state_dict(older | {"step": 2})
    assert float(controller.beta) == 0.5
