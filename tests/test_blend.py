"""Blending: weight-blend equals output-blend, straight-through gradients, and a free original branch at β = 0."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vcon.compression import from_config
from vcon.method.blend import Beta, BlendedBranches, BlendedLinear, blend_, drop_originals

PRUNE = {"name": "prune", "ratio": 0.75}
BINARY = {"name": "quant", "bits": 1}
PRUNE_BINARY = {"name": "chain", "steps": [PRUNE, BINARY]}


def two_layer_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))


@pytest.mark.parametrize("settings", [PRUNE, BINARY, PRUNE_BINARY])
@pytest.mark.parametrize("beta", [1.0, 0.7, 0.25, 0.0])
def test_weight_blend_equals_output_blend(settings, beta):
    compression = from_config(settings)
    f = two_layer_net()[0]
    g = nn.Linear(16, 32)
    with torch.no_grad():
        g.weight.copy_(compression.compress(f.weight))
        g.bias.copy_(f.bias)
    blended = BlendedLinear(f, compression, Beta(beta))
    x = torch.randn(10, 16)
    assert torch.allclose(blended(x), beta * f(x) + (1 - beta) * g(x), atol=1e-5)


@pytest.mark.parametrize("settings", [PRUNE, BINARY, PRUNE_BINARY])
def test_latent_weight_gets_the_gradient_taken_at_the_effective_weight(settings):
    compression = from_config(settings)
    f = nn.Linear(16, 32)
    beta = 0.4
    w_eff = (beta * f.weight + (1 - beta) * compression.compress(f.weight)).detach().requires_grad_()
    x = torch.randn(10, 16)
    F.linear(x, w_eff, f.bias.detach()).pow(2).sum().backward()

    blended = BlendedLinear(f, compression, Beta(beta))
    blended(x).pow(2).sum().backward()
    assert torch.allclose(f.weight.grad, w_eff.grad, atol=1e-5)
    pruned = compression.compress(f.weight) == 0
    if pruned.any():  # pruned weights receive a gradient too (straight-through), so they can grow back
        assert (f.weight.grad[pruned] != 0).all()


@pytest.mark.parametrize("beta_value", [0.8, 0.3])
def test_low_rank_weight_blend_equals_output_blend_with_the_same_gradients(beta_value):
    """During the transition a low-rank layer blends W with B·A (one matmul); outputs and the gradients of W, b, A,
    B and the bias of g must be those of blending the two branches' outputs."""
    torch.manual_seed(0)
    f = nn.Linear(16, 12)
    g = from_config({"name": "lrd", "rank": 4}).build(f)
    with torch.no_grad():  # g a little away from the SVD, as after some training
        g.up.bias.add_(0.1)
        g.down.weight.mul_(1.1)
    blended = BlendedBranches(f, g, Beta(beta_value))
    x = torch.randn(5, 16)
    out = blended(x)
    grads = torch.autograd.grad(out.square().sum(), [f.weight, f.bias, g.down.weight, g.up.weight, g.up.bias])
    expected = beta_value * f(x) + (1 - beta_value) * g(x)
    expected_grads = torch.autograd.grad(expected.square().sum(),
                                         [f.weight, f.bias, g.down.weight, g.up.weight, g.up.bias])
    assert torch.allclose(out, expected, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, expected_grads))


def test_low_rank_blends_outputs_and_drops_the_original_at_zero():
    net = two_layer_net()
    x = torch.randn(4, 16)
    dense_out = net(x).detach()
    lrd = from_config({"name": "lrd", "rank": 4})
    beta = blend_(net, lrd, ["0", "2"])
    assert isinstance(net[0], BlendedBranches) and isinstance(net[2], BlendedBranches)
    assert torch.allclose(net(x), dense_out)  # β = 1: the original network

    beta.value = 0.3
    h = net[0].original(x), net[0].compressed(x)
    assert torch.allclose(net[0](x), 0.3 * h[0] + 0.7 * h[1], atol=1e-6)

    optimizer = torch.optim.AdamW(net.parameters())
    net(x).sum().backward()
    optimizer.step()
    before = sum(p.numel() for p in net.parameters())
    originals = sum(p.numel() for m in (net[0], net[2]) for p in m.original.parameters())
    beta.value = 0.0
    assert drop_originals(net, optimizer) == 4  # weight and bias of two layers
    assert net[0].original is None
    assert sum(p.numel() for p in net.parameters()) == before - originals
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in in_optimizer} == {id(p) for p in net.parameters()}
    assert set(map(id, optimizer.state)) <= {id(p) for p in in_optimizer}
    assert not any(k.startswith("0.original") for k in net.state_dict())
    out = net(x)
    assert torch.allclose(out, net[2].compressed(F.gelu(net[0].compressed(x))))
    optimizer.zero_grad()
    out.sum().backward()
    optimizer.step()  # training goes on with the compressed branches only


def test_weight_compressions_keep_the_dense_state_dict_keys():
    net = two_layer_net()
    keys = set(net.state_dict())
    blend_(net, from_config(PRUNE), ["0", "2"])
    assert set(net.state_dict()) == keys


def test_beta_fixed_restores_the_value():
    beta = Beta(0.6)
    with beta.fixed(0.0):
        assert beta.value == 0.0
    assert beta.value == 0.6


def test_dense_baseline_wraps_nothing():
    net = two_layer_net()
    blend_(net, from_config({"name": "none"}), ["0", "2"])
    assert isinstance(net[0], nn.Linear) and isinstance(net[2], nn.Linear)


@pytest.mark.parametrize("settings", [PRUNE, BINARY, PRUNE_BINARY])
def test_a_blended_model_compresses_all_its_layers_once_per_forward(settings):
    """blend_ computes C(W) of every blended layer in one compress_all call before each forward of the model (and
    drops them after it); outputs and straight-through gradients equal those of each layer compressing its own."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))
    x = torch.randn(6, 32)
    compression = from_config(settings)
    w = [net[i].weight.detach().clone().requires_grad_() for i in (0, 2, 4)]
    b = [net[i].bias for i in (0, 2, 4)]

    def expected(beta):  # layer by layer, with the STE written out: W_eff = β·W + (1−β)·(W + (C(W) − W).detach())
        h = x
        for i, (wi, bi) in enumerate(zip(w, b)):
            w_eff = beta * wi + (1 - beta) * (wi + (compression.compress(wi.detach()) - wi.detach()))
            h = F.linear(h, w_eff, bi)
            h = F.gelu(h) if i < 2 else h
        return h

    calls = []
    compress_all = compression.compress_all
    compression.compress_all = lambda weights, strength: calls.append(len(weights)) or compress_all(weights, strength)
    beta = blend_(net, compression, ["0", "2", "4"])
    beta.value = 0.4
    out = net(x)
    assert calls == [3] and all(net[i].precomputed is None for i in (0, 2, 4))
    ref = expected(0.4)
    assert torch.allclose(out, ref, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for i, wi in zip((0, 2, 4), w):
        assert torch.allclose(net[i].weight.grad, wi.grad, atol=1e-5)
    beta.value = 1.0
    net(x)
    assert calls == [3]  # β = 1 is the original network: nothing to compress


def tiny_bert(num_labels=3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64,
                                                    num_labels=num_labels)).eval()


TOKENS = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(0))


def watch_compress_all(compression):
    """The weights every compress_all call of ``compression`` is given, by data pointer."""
    seen = []
    compress_all = compression.compress_all
    compression.compress_all = lambda weights, strength: seen.extend(w.data_ptr() for w in weights) or compress_all(
        weights, strength)
    return seen


def test_copies_of_a_blended_model_never_compute_the_weights_of_the_model_they_came_from(tmp_path):
    """blend_'s hooks go with a deep copy as the copy's own (they compute its weights), and export's copies (the
    packed model, the dense twin whose latency the figures report) have none: none of them recomputes C(W) of the
    training model, and the dense twin compresses nothing at all."""
    from vcon import Prune, compress_, export

    controller = compress_(tiny_bert(), Prune(ratio=0.5))  # one-shot: β = 0
    training = {controller.model.get_submodule(n).weight.data_ptr() for n in controller.names}
    seen = watch_compress_all(controller.compression)
    copy_ = copy.deepcopy(controller.model)
    with torch.no_grad():
        torch.testing.assert_close(copy_(input_ids=TOKENS).logits, controller.model(input_ids=TOKENS).logits)
    mine = {copy_.get_submodule(n).weight.data_ptr() for n in controller.names}
    assert len(seen) == 2 * len(controller.names) and set(seen) == mine | training  # each model its own weights

    seen.clear()
    twin = export.dense_twin(controller.model, controller.names)
    assert not twin._forward_pre_hooks and not twin._forward_hooks
    assert all(type(twin.get_submodule(n)) is nn.Linear for n in controller.names)
    with torch.no_grad():
        twin(input_ids=TOKENS)
    export.export_model(controller, tmp_path / "export", timing_s=0.01)  # timed: the twin and the loaded export
    assert seen == []


def finalized_round_trip(compression, tmp_path):
    """A small BERT compressed one-shot, its β = 0 logits, then finalize(), save_pretrained and the standard
    from_pretrained of its class: (controller, β = 0 logits, finalized logits, reloaded model)."""
    from transformers import BertForSequenceClassification

    from vcon import compress_

    controller = compress_(tiny_bert(), compression)
    with torch.no_grad():
        blended = controller.model(input_ids=TOKENS).logits
        model = controller.finalize()
        finalized = model(input_ids=TOKENS).logits
    assert not model._forward_pre_hooks and not model._forward_hooks  # the training hooks went with the blends
    model.save_pretrained(tmp_path)
    return controller, blended, finalized, BertForSequenceClassification.from_pretrained(tmp_path).eval()


@pytest.mark.parametrize("settings, zeros, values", [
    ({"name": "prune", "ratio": 0.9}, 0.9, None),
    (BINARY, 0.0, {2}),  # ±scale
    ({"name": "quant", "bits": 4}, None, range(2, 15)),  # the 14 levels ±1..±7 times the scale, 0 aside
    (PRUNE_BINARY, 0.75, {2}),  # zeros, and ±scale
], ids=["prune 0.9", "binary", "4-bit", "prune + binary"])
def test_after_finalize_save_pretrained_writes_the_compressed_weights(settings, zeros, values, tmp_path):
    controller, blended, finalized, loaded = finalized_round_trip(from_config(settings), tmp_path)
    torch.testing.assert_close(finalized, blended, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=TOKENS).logits, finalized)
    for name in controller.names:
        assert type(controller.model.get_submodule(name)) is nn.Linear
        weight = loaded.get_submodule(name).weight
        if zeros is not None:
            assert int((weight == 0).sum()) == round(zeros * weight.numel()), name
        if values is not None:  # distinct non-zero values
            assert len(weight[weight != 0].unique()) in values, name
    assert controller.figures() == compress_one_shot_figures(settings)


def compress_one_shot_figures(settings):
    from vcon import compress_

    return compress_(tiny_bert(), from_config(settings)).figures()


def test_a_finalized_low_rank_model_holds_its_factors_and_is_saved_by_vcon_export_not_save_pretrained(tmp_path):
    from vcon import compress_, export
    from vcon.compression.lrd import LowRankLinear
    from vcon.errors import ExportError

    settings = {"name": "lrd", "rank": 4}
    controller = compress_(tiny_bert(), from_config(settings))
    with torch.no_grad():
        blended = controller.model(input_ids=TOKENS).logits
    model = controller.finalize()
    assert all(type(model.get_submodule(n)) is LowRankLinear for n in controller.names)
    assert {k for k in model.state_dict() if k.startswith(controller.names[0] + ".")} == {
        f"{controller.names[0]}.{k}" for k in ("down.weight", "up.weight", "up.bias")}
    with pytest.raises(ExportError, match=r"cannot save this finalized model: 12 of its layers .* are LowRankLinear"
                                          r".*vcon\.export\.export_model\(controller, folder\)"):
        model.save_pretrained(tmp_path / "pretrained")
    assert not (tmp_path / "pretrained").exists()
    assert controller.figures() == compress_one_shot_figures(settings)
    export.export_model(controller, tmp_path / "export", timing_s=0)
    with torch.no_grad():
        torch.testing.assert_close(export.load(tmp_path / "export")(input_ids=TOKENS).logits, blended)
        torch.testing.assert_close(model(input_ids=TOKENS).logits, blended)
