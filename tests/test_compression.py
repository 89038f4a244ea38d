"""Compression operators: exact ratios, N:M structure, binary values, SVD rank and reconstruction, bad settings."""
import math

import pytest
import torch
from torch import nn

from vcon.compression import REGISTRY, Footprint, from_config
from vcon.compression.lrd import LowRankLinear
from vcon.errors import ConfigError


def weight(rows=48, cols=64, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_prune_layer_zeroes_exactly_the_ratio_of_smallest_magnitudes(ratio):
    w = weight()
    c = from_config({"name": "prune", "ratio": ratio, "granularity": "layer"}).compress(w)
    zeros = int((c == 0).sum())
    assert zeros == round(ratio * w.numel())
    kept = c != 0
    if zeros and kept.any():
        assert w.abs()[~kept].max() <= w.abs()[kept].min()
    assert torch.equal(c[kept], w[kept])


def test_prune_is_exact_even_with_ties():
    w = torch.ones(8, 8)
    c = from_config({"name": "prune", "ratio": 0.75}).compress(w)
    assert int((c == 0).sum()) == 48


def test_prune_row_gives_every_row_the_ratio():
    w = weight(10, 40)
    c = from_config({"name": "prune", "ratio": 0.75, "granularity": "row"}).compress(w)
    assert ((c == 0).sum(dim=1) == 30).all()


def test_prune_n_of_m_keeps_n_largest_in_every_group():
    w = weight(16, 32)
    c = from_config({"name": "prune", "ratio": 0.5, "granularity": "2:4"}).compress(w)
    groups, original = c.reshape(-1, 4), w.reshape(-1, 4).abs()
    assert ((groups != 0).sum(dim=1) == 2).all()
    top2 = original.topk(2, dim=1).indices.sort(dim=1).values
    assert torch.equal((groups != 0).nonzero()[:, 1].reshape(-1, 2), top2)


def test_binary_is_sign_times_mean_magnitude():
    w = weight()
    c = from_config({"name": "quant", "bits": 1}).compress(w)
    scale = w.abs().mean()
    assert torch.allclose(c, torch.sign(w) * scale)
    assert c.unique().tolist() == pytest.approx([-scale.item(), scale.item()])


def test_k_bit_uses_at_most_2_to_the_k_minus_1_levels():
    w = weight()
    c = from_config({"name": "quant", "bits": 3}).compress(w)
    assert len(c.unique()) <= 7
    assert (c - w).abs().max() <= w.abs().max() / 3 / 2 + 1e-6  # half a step of s = max|W| / 3


def test_prune_then_binarise_keeps_zeros_and_scales_by_the_survivors():
    w = weight()
    c = from_config({"name": "chain", "steps": [{"name": "prune", "ratio": 0.5}, {"name": "quant"}]}).compress(w)
    assert int((c == 0).sum()) == w.numel() // 2
    survivors = w[c != 0]
    assert torch.allclose(c[c != 0].abs(), survivors.abs().mean().expand(survivors.numel()))
    assert torch.equal(torch.sign(c[c != 0]), torch.sign(survivors))


def test_low_rank_factors_are_the_truncated_svd():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    lrd = from_config({"name": "lrd", "rank": 8})
    g = lrd.build(linear)
    assert isinstance(g, LowRankLinear)
    assert g.down.weight.shape == (8, 64) and g.up.weight.shape == (48, 8)
    product = g.up.weight @ g.down.weight
    assert torch.linalg.matrix_rank(product) == 8
    s = torch.linalg.svdvals(linear.weight)
    error = torch.linalg.matrix_norm(linear.weight - product)  # Eckart-Young: the norm of the dropped tail
    assert error.item() == pytest.approx(s[8:].norm().item(), rel=1e-4)
    x = torch.randn(5, 64)
    assert torch.allclose(g(x), x @ product.T + linear.bias, atol=1e-5)


def test_low_rank_reconstructs_a_low_rank_matrix_exactly():
    linear = nn.Linear(32, 24)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(24, 4) @ torch.randn(4, 32))
    g = from_config({"name": "lrd", "rank": 4}).build(linear)
    assert torch.allclose(g.up.weight @ g.down.weight, linear.weight, atol=1e-4)


def test_low_rank_fraction_of_full_rank():
    lrd = from_config({"name": "lrd", "rank": 0.25})
    assert lrd.rank_for(48, 64) == 12


@pytest.mark.parametrize("settings, named", [
    ({"name": "prune", "ratio": 1.0}, "compression.ratio=1.0"),
    ({"name": "prune", "ratio": -0.1}, "compression.ratio=-0.1"),
    ({"name": "prune", "granularity": "column"}, "compression.granularity='column'"),
    ({"name": "prune", "ratio": 0.9, "granularity": "2:4"}, "compression.ratio=0.5"),
    ({"name": "lrd", "rank": 0}, "compression.rank=0"),
    ({"name": "lrd", "rank": -3}, "compression.rank=-3"),
    ({"name": "quant", "bits": 9}, "compression.bits=9"),
    ({"name": "zip"}, "compression.name='zip'"),
    ({"name": "prune", "amount": 0.5}, "amount"),
])
def test_bad_settings_name_the_value(settings, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(".", r"\.")):
        from_config(settings)


def test_rank_larger_than_a_layer_allows_is_refused_with_its_limit():
    lrd = from_config({"name": "lrd", "rank": 40})
    with pytest.raises(ConfigError, match=r"compression.rank=40 .*at most 32.*enc\.0"):
        lrd.check({"enc.0": nn.Linear(32, 48)})


def test_n_of_m_needs_inputs_divisible_by_m():
    with pytest.raises(ConfigError, match="2:4"):
        from_config({"name": "prune", "ratio": 0.5, "granularity": "2:4"}).check({"l": nn.Linear(6, 4)})


def test_footprints_compose():
    dense = Footprint(64 * 48, 32)
    prune = from_config({"name": "prune", "ratio": 0.9}).footprint(dense, torch.Size([48, 64]))
    assert prune.values == 64 * 48 - round(0.9 * 64 * 48) and prune.overhead_bits == 64 * 48  # bitmask
    binary = from_config({"name": "quant"}).footprint(dense, torch.Size([48, 64]))
    assert binary.bits == 64 * 48 + 32
    both = from_config({"name": "chain", "steps": [{"name": "prune", "ratio": 0.9}, {"name": "quant"}]})
    assert both.footprint(dense, torch.Size([48, 64])).bits == prune.values + 64 * 48 + 32
    lrd = from_config({"name": "lrd", "rank": 8}).footprint(dense, torch.Size([48, 64]))
    assert lrd.values == 8 * (48 + 64) and lrd.bits == 32 * 8 * 112
    assert math.isclose(Footprint(10, 4, 2).bits, 42)


def test_every_compression_has_a_config():
    from conftest import CONF

    names = {p.read_text().split("name: ")[1].split()[0] for p in (CONF / "compression").glob("*.yaml")}
    assert set(REGISTRY) == names


@pytest.mark.parametrize("settings", [
    {"name": "prune", "ratio": 0.9}, {"name": "prune", "ratio": 0.5, "granularity": "row"},
    {"name": "prune", "ratio": 0.5, "granularity": "2:4"}, {"name": "quant", "bits": 1}, {"name": "quant", "bits": 4},
    {"name": "chain", "steps": [{"name": "prune", "ratio": 0.75}, {"name": "quant", "bits": 1}]},
])
def test_compressing_many_layers_at_once_equals_one_by_one(settings):
    """compress_all stacks same-shaped matrices (one top-k for all of them): each result must be that layer's own
    C(W) — its own mask, its own scale — whatever the other layers of its shape hold."""
    compression = from_config(settings)
    weights = [weight(48, 64, seed=1), weight(64, 48, seed=2), weight(48, 64, seed=3) * 10, weight(48, 64, seed=4)]
    for together, alone in zip(compression.compress_all(weights), map(compression.compress, weights)):
        assert torch.allclose(together, alone, rtol=1e-6, atol=1e-7)
        assert torch.equal(together == 0, alone == 0)


@pytest.mark.parametrize("settings", [
    {"name": "prune", "ratio": 0.9}, {"name": "prune", "ratio": 0.5, "granularity": "row"},
    {"name": "prune", "ratio": 0.5, "granularity": "2:4"}, {"name": "quant", "bits": 1}, {"name": "quant", "bits": 4},
    {"name": "chain", "steps": [{"name": "prune", "ratio": 0.9}, {"name": "quant", "bits": 1}]},
])
def test_a_finalized_layer_packs_into_exactly_what_it_computes(settings):
    """Export packs the layer finalize leaves (an nn.Linear holding C(W)) as it is. Compressing C(W) again would
    keep its stored entries (checked here) but not always its values to the last bit (a binary scale is a mean),
    so pack must not: what the loaded layer computes is C(W) of the latent W."""
    from vcon.method.blend import Beta, BlendedLinear

    compression = from_config(settings)
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    compressed = compression.compress(linear.weight.detach())
    again = compression.compress(compressed)
    assert torch.allclose(again, compressed, rtol=1e-6, atol=0) and torch.equal(again == 0, compressed == 0)
    stored, stored_again = compression.stored(linear.weight.detach()), compression.stored(compressed)
    assert (stored is None and stored_again is None) or torch.equal(stored_again, stored)
    finalized = BlendedLinear(linear, compression, Beta(0.0)).finalized()
    assert type(finalized) is nn.Linear and torch.equal(finalized.weight, compressed)
    runtime = compression.unpack(compression.pack(finalized))
    x = torch.eye(64)  # one input per column: the runtime's rows are its weight's columns, plus the bias
    with torch.no_grad():
        torch.testing.assert_close(runtime(x) - linear.bias, compressed.T, rtol=1e-6, atol=1e-7)
