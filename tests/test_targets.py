"""Module targeting on the installed transformers' ViT, without relying on its attribute names."""
import copy

import pytest
import torch
from conftest import make_config
from omegaconf import OmegaConf
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from vcon import Prune, compress_
from vcon.app import job
from vcon.core.targets import block_lists, select
from vcon.errors import ConfigError

DEFAULT = {"within": "blocks", "types": ["Linear"], "include": ["*"], "exclude": []}


@pytest.fixture(scope="module")
def vit_tiny():
    """ViT-T/16's real shape (12 blocks, width 192) with random weights: the hub is not needed to test targeting."""
    return ViTForImageClassification(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                               intermediate_size=768, num_labels=10))


def target(**kw):
    return OmegaConf.create({**DEFAULT, **kw})


def test_default_targets_every_linear_in_the_blocks(vit_tiny):
    chosen = select(vit_tiny, target())
    assert len(chosen) == 72  # q, k, v, attention output, MLP in, MLP out: 6 per block, 12 blocks
    assert all(isinstance(m, nn.Linear) for m in chosen.values())
    head = vit_tiny.get_output_embeddings() if hasattr(vit_tiny, "get_output_embeddings") else None
    assert vit_tiny.classifier not in chosen.values()
    assert head is None or head not in chosen.values()
    patch = [m for m in vit_tiny.modules() if isinstance(m, nn.Conv2d)]
    assert patch and not any(m in chosen.values() for m in patch)
    shapes = sorted({tuple(m.weight.shape) for m in chosen.values()})
    assert shapes == [(192, 192), (192, 768), (768, 192)]


def test_blocks_are_found_structurally(vit_tiny):
    (blocks,) = block_lists(vit_tiny)
    assert len(vit_tiny.get_submodule(blocks)) == 12


def test_patterns_narrow_the_choice(vit_tiny):
    mlp_out = [n for n, m in vit_tiny.named_modules() if isinstance(m, nn.Linear) and m.in_features == 768]
    name = mlp_out[0].rsplit(".", 1)[1]
    assert len(select(vit_tiny, target(include=[f"*.{name}"]))) == 12
    assert len(select(vit_tiny, target(exclude=[f"*.{name}"]))) == 60
    assert len(select(vit_tiny, target(within="all"))) == 73  # the classifier head too


def test_no_match_is_an_error_naming_the_pattern(vit_tiny):
    with pytest.raises(ConfigError, match=r"include=\['\*\.nothing'\].*matches no module"):
        select(vit_tiny, target(include=["*.nothing"]))


def test_unknown_type_is_an_error(vit_tiny):
    with pytest.raises(ConfigError, match="target.types='Dense'"):
        select(vit_tiny, target(types=["Dense"]))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.Linear(8, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    def forward(self, x):
        return x + self.mlp(x + self.attention(x))


def test_a_model_that_is_itself_a_sequential_of_blocks_has_its_blocks_chosen():
    """timm-style ``nn.Sequential(block, block, ...)`` as the whole model: the list of blocks is the model ("")."""
    net = nn.Sequential(Block(), Block(), Block())
    assert block_lists(net) == [""]
    chosen = select(net, target())
    assert sorted(chosen) == sorted(f"{i}.{n}" for i in range(3) for n in ("attention", "mlp.0", "mlp.2"))
    controller = compress_(net, Prune(ratio=0.5))  # the library's default choice: the same blocks
    assert len(controller.names) == 9 and net(torch.randn(2, 8)).shape == (2, 8)


@pytest.mark.parametrize("within", ["blocks", "all"])
def test_a_type_vcon_cannot_compress_is_refused_naming_it_and_the_allowed(vit_tiny, within):
    message = "target.types='Conv2d' is not allowed: expected one of ['Linear']: the torch.nn layers vcon compresses"
    with pytest.raises(ConfigError) as refused:
        select(vit_tiny, target(within=within, types=["Linear", "Conv2d"]))
    assert str(refused.value).startswith(message)
    with pytest.raises(ConfigError) as refused:  # by the run's first checks, before the model is loaded
        job.check(make_config(f"target.within={within}", "target.types=[Conv2d]"))
    assert str(refused.value).startswith(message)


def test_a_filter_fn_picking_what_vcon_cannot_compress_is_refused_naming_it(vit_tiny):
    net = copy.deepcopy(vit_tiny)
    first = next(n for n, m in net.named_modules() if isinstance(m, nn.LayerNorm))
    with pytest.raises(ConfigError) as refused:
        compress_(net, Prune(ratio=0.5), filter_fn=lambda module, name: isinstance(module, (nn.Linear, nn.LayerNorm)))
    assert str(refused.value) == (f"filter_fn picks 25 module(s) that vcon cannot compress, e.g. {first} (LayerNorm); "
                                  "allowed: torch.nn ['Linear'] (subclasses included)")
