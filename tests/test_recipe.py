"""Recipes: a compression for each group of layers, through the verb (a ViT, a BERT, a two-layer MLP) and through
run.py's config; precedence; each group's own Q; gradual and one-shot; export of a mixed model; bad input."""
import json

import pytest
import torch
from conftest import QUICK, make_config, requires_fashion_mnist, run_py, tiny_bert, tiny_vit
from torch import nn

from vcon import Group, LowRank, Prune, Quant, Recipe, Schedule, compress_, export
from vcon.app import job
from vcon.compression.lrd import LowRankLinear
from vcon.errors import ConfigError
from vcon.method import Gradual
from vcon.method.blend import BlendedBranches, BlendedLinear
from vcon.method.gradual import GradualBranches


def kinds(controller) -> dict[str, str]:
    return {name: type(controller.model.get_submodule(name)).__name__ for name in controller_all(controller)}


def controller_all(controller) -> list[str]:
    return [name for part in controller.parts for name in part.names]


ATTENTION_BINARY_MLP_LOW_RANK = {"*.attention.*": Quant(bits=1), "*.mlp.*": LowRank(rank=4), "_default": None}


def test_a_vit_recipe_gives_each_group_its_compression_and_the_rest_stays_dense():
    net = tiny_vit()
    controller = compress_(net, ATTENTION_BINARY_MLP_LOW_RANK, schedule=Schedule("linear", 4))
    layer = "vit.layers.0"
    assert isinstance(net.get_submodule(f"{layer}.attention.q_proj"), BlendedLinear)
    assert isinstance(net.get_submodule(f"{layer}.mlp.fc1"), BlendedBranches)
    assert [p.name for p in controller.parts] == ["*.attention.*", "*.mlp.*", "default"]
    assert controller.parts[2].names == []  # "_default": None leaves whatever the patterns do not take dense
    net(pixel_values=torch.randn(2, 1, 16, 16))
    model = controller.finalize()
    q = model.get_submodule(f"{layer}.attention.q_proj")
    assert type(q) is nn.Linear and q.weight.abs().unique().numel() == 1  # ±scale
    assert isinstance(model.get_submodule(f"{layer}.mlp.fc1"), LowRankLinear)
    figures = controller.figures()
    assert figures["groups"]["*.attention.*"]["bits_per_weight"] < 1.1
    assert figures["layers"] == 18 and figures["groups"]["*.mlp.*"]["layers"] == 6  # 3 blocks of 4 + 2


def test_a_bert_recipe_prunes_the_mlp_and_binarises_attention():
    net = tiny_bert()
    recipe = {"*.attention.*": Quant(bits=1), "*.intermediate.*": Prune(ratio=0.5), "*.output.*": Prune(ratio=0.5)}
    controller = compress_(net, recipe)  # one-shot: β = 0 at once
    kinds_ = kinds(controller)
    assert kinds_["bert.encoder.layer.0.attention.output.dense"] == "BlendedLinear"
    assert controller.compression_of("bert.encoder.layer.0.attention.output.dense").name == "quant"  # first match
    assert controller.compression_of("bert.encoder.layer.1.output.dense").name == "prune"
    zeros = (net.get_submodule("bert.encoder.layer.1.output.dense").effective_weight() == 0).float().mean()
    assert float(zeros) == pytest.approx(0.5, abs=0.01)
    net(input_ids=torch.randint(0, 50, (2, 8)))


def test_a_two_layer_mlp_recipe_by_exact_names():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    controller = compress_(mlp, {"0": Prune(ratio=0.75), "2": LowRank(rank=2)},
                           filter_fn=lambda m, n: isinstance(m, nn.Linear))
    assert kinds(controller) == {"0": "BlendedLinear", "2": "BlendedBranches"}
    x = torch.randn(5, 8)
    by_hand = Prune(ratio=0.75).compress(controller.model[0].weight)
    want = controller.model[2](torch.relu(x @ by_hand.T + controller.model[0].bias))
    torch.testing.assert_close(mlp(x), want)


@pytest.mark.parametrize("recipe, expected", [
    # an exact name wins over an earlier pattern
    ({"*": Prune(ratio=0.5), "vit.layers.0.mlp.fc1": LowRank(rank=2)}, {"vit.layers.0.mlp.fc1": "lrd",
                                                                          "vit.layers.0.mlp.fc2": "prune"}),
    # the first matching pattern wins over a later one
    ({"*.layers.1.*": LowRank(rank=2), "*.mlp.*": Quant(bits=1), "_default": Prune(ratio=0.5)},
     {"vit.layers.1.mlp.fc1": "lrd", "vit.layers.0.mlp.fc1": "quant", "vit.layers.0.attention.q_proj": "prune"}),
    # the default takes what no pattern does, whatever its place in the mapping
    ({"_default": Quant(bits=1), "re:.*\\.layers\\.[01]\\..*": Prune(ratio=0.5)},
     {"vit.layers.1.mlp.fc2": "prune", "vit.layers.2.mlp.fc2": "quant"}),
    # {last} is the last block, None leaves it dense
    ({"*.layers.{last}.*": None, "_default": Prune(ratio=0.5)}, {"vit.layers.2.mlp.fc2": None,
                                                                 "vit.layers.1.mlp.fc2": "prune"}),
])
def test_precedence(recipe, expected):
    controller = compress_(tiny_vit(), recipe)
    for name, want in expected.items():
        got = next(p.compression for p in controller.parts if name in p.names)
        assert (None if got.dense else got.name) == want, name


@pytest.mark.parametrize("recipe, message", [
    ({"*.mlp.*": Prune(ratio=0.5), "*.fc1": Quant(bits=1)}, "compression.groups.*.fc1.patterns=['*.fc1'] match only "
     "modules that groups ['*.mlp.*'] take first"),
    ({"*.conv.*": Prune(ratio=0.5)}, "compression.groups.*.conv.*.patterns=['*.conv.*'] match no module"),
    ({"*.mlp.*": LowRank(rank=40)}, "compression.groups.*.mlp.*.rank=40 is not allowed: expected at most 32"),
])
def test_bad_recipes_are_refused_before_the_model_changes(recipe, message):
    net = tiny_vit()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")
                       .replace(".", r"\.")):
        compress_(net, recipe)
    assert all(type(m) is not BlendedLinear for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_name_given_exactly_by_two_groups_is_refused():
    recipe = Recipe({"a": Group(("vit.layers.0.mlp.fc1",), Prune(ratio=0.5)),
                     "b": Group(("vit.layers.0.mlp.fc1", "*.fc2"), Quant(bits=1))})
    with pytest.raises(ConfigError, match="groups.a and compression.groups.b both name module vit.layers.0.mlp.fc1"):
        compress_(tiny_vit(), recipe)


def test_each_group_moves_on_its_own_schedule_and_drops_its_originals_at_its_own_q():
    recipe = Recipe({"attention": Group(("*.attention.*",), Quant(bits=1), Schedule("linear", 2)),
                     "mlp": Group(("*.mlp.*",), LowRank(rank=4))})  # the default schedule: Q = 4
    controller = compress_(tiny_vit(), recipe, schedule=Schedule("linear", 4))
    attention, mlp = controller.parts
    optimizer = torch.optim.SGD(controller.model.parameters(), lr=0.1)
    seen = []
    for _ in range(4):
        changed = controller.step(optimizer)
        seen.append((attention.beta.value, mlp.beta.value, changed))
    assert seen == [(0.5, 0.75, False), (0.0, 0.5, False), (0.0, 0.25, False), (0.0, 0.0, True)]
    assert controller.q_steps == 4 and controller.finished
    assert controller.scalars() == {"vcon/beta": 0.0, "vcon/beta/attention": 0.0, "vcon/beta/mlp": 0.0}
    state = controller.state_dict()
    assert state["schedules"]["attention"]["q_steps"] == 2


def test_gradual_and_one_shot_with_a_recipe():
    gradual = compress_(tiny_vit(), {"*.attention.*": Prune(ratio=0.5), "*.mlp.*": LowRank(rank=4)},
                        schedule=Schedule("linear", 4), method=Gradual(svd_every=1))
    assert isinstance(gradual.model.get_submodule("vit.layers.0.mlp.fc1"), GradualBranches)
    gradual.step()
    scalars = gradual.scalars()
    assert scalars["gradual/strength/*.attention.*"] == 0.25 and scalars["gradual/zeros/*.attention.*"] == 0.125
    one_shot = compress_(tiny_vit(), {"*.attention.*": Prune(ratio=0.5), "*.mlp.*": LowRank(rank=4)})
    assert one_shot.beta.value == 0 and one_shot.finished


def test_a_mixed_model_exports_and_loads_back_exactly(tmp_path):
    controller = compress_(tiny_vit(), {"*.attention.*": Quant(bits=1), "*.fc1": LowRank(rank=4),
                                        "*.layers.{last}.*": None, "_default": Prune(ratio=0.75)})
    net = controller.model.eval()
    figures = export.export_model(controller, tmp_path / "export", timing_s=0)
    loaded = export.load(tmp_path / "export")
    x = torch.randn(6, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(pixel_values=x).logits, net(pixel_values=x).logits, rtol=1e-5, atol=1e-5)
    layers = json.loads((tmp_path / "export" / export.CONFIG).read_text())[export.KEY]["layers"]
    assert {m["compression"]["name"] for m in layers.values()} == {"quant", "lrd", "prune"}
    assert "vit.layers.2.mlp.fc2" not in layers and type(loaded.get_submodule("vit.layers.2.mlp.fc2")) is nn.Linear
    assert figures["compression"]["name"] == "recipe"


# --- through run.py's config ---------------------------------------------------------------------------------

RECIPE = ["compression=recipe-attention-binary-mlp-lrd", "compression.groups.mlp.rank=4"]


@pytest.mark.parametrize("overrides, message", [
    (["compression.groups.mlp.rank=100"], "compression.groups.mlp.rank=100 is not allowed: expected at most 64"),
    (["+compression.groups.mlp.colour=red"], "compression.groups.mlp=lrd has no setting(s) ['colour']"),
    (["compression.groups.mlp.patterns=[*.conv.*]"], "compression.groups.mlp.patterns=['*.conv.*'] match no module"),
    (["compression.groups.mlp.name=pruned"], "compression.groups.mlp.name='pruned' is not a known compression"),
    (["+compression.groups.mlp.vcon.q=2"], "compression.groups.mlp.vcon={'q': 2} is not allowed"),
    (["compression.groups.mlp.patterns=['re:(']"], "compression.groups.mlp.patterns: 're:(' is not a regular"),
])
def test_bad_recipe_settings_are_refused_before_anything_loads(overrides, message):
    with pytest.raises(ConfigError) as refused:
        job.check(make_config(*QUICK, *RECIPE, *overrides))
    assert message in str(refused.value)


def test_the_presets_compose_and_check():
    for preset in ("recipe-edges-dense", "recipe-attention-binary-mlp-lrd"):
        for model in ("vit-micro", "bert-micro"):
            data = "fashion-mnist" if model == "vit-micro" else "rotten-tomatoes"
            compression, _ = job.check(make_config(f"compression={preset}", f"model={model}", f"data={data}"))
            assert compression.name == "recipe"


@requires_fashion_mnist
def test_a_recipe_run_reports_each_group(tmp_path):
    cfg = make_config(*QUICK, "model=vit-micro-scratch", *RECIPE, "+compression.groups.attention.vcon.epochs=2")
    results = job.run(cfg, tmp_path)
    groups = results["compression"]["groups"]
    assert list(groups) == ["attention", "mlp"]
    assert groups["attention"]["bits_per_weight"] < 1.1 and groups["mlp"]["params_after"] < groups["mlp"][
        "params_before"]
    assert results["compression"]["layers"] == groups["attention"]["layers"] + groups["mlp"]["layers"]
    assert results["q_steps"] == 2 * results["steps_per_epoch"]  # the longest group's
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["compression"]["groups"] == groups


def test_a_groups_own_transition_is_part_of_the_run_identity():
    from vcon.app.identity import run_id

    one_shot = [*QUICK, *RECIPE, "vcon.epochs=0"]
    plain, own = run_id(make_config(*one_shot)), run_id(make_config(*one_shot, "+compression.groups.mlp.vcon.epochs=1"))
    assert plain != own  # the run is one-shot, its MLP group is not
    gradual = run_id(make_config(*one_shot, "+compression.groups.mlp.vcon.epochs=1", "method=gradual"))
    assert gradual != own  # and then the method matters
    assert run_id(make_config(*one_shot, "method=gradual")) == plain  # one-shot everywhere: the method does not


def test_run_py_refuses_a_bad_group_in_one_line_before_anything_loads(tmp_path):
    done = run_py(*QUICK, *RECIPE, "compression.groups.mlp.rank=100", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == ("vcon: error: compression.groups.mlp.rank=100 is not allowed: "
                                                    "expected at most 64, the full rank of layer vit.layers.0.mlp.fc1 "
                                                    "(256x64)")
    assert "Traceback" not in done.stderr and "data fashion-mnist" not in done.stderr  # nothing was loaded
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder
