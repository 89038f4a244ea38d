"""The README's own-training-loop example, run as it is written there, on the shipped vit-micro and real
Fashion-MNIST batches: β over the steps, the originals gone, the compression reached, the model still accurate."""
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import QUICK, ROOT, make_config, requires_fashion_mnist
from transformers import AutoModelForImageClassification

from vcon import data
from vcon.method.blend import BlendedBranches
from vcon.model import asset

pytestmark = requires_fashion_mnist
BATCH, STEPS_PER_EPOCH = 64, 16


def readme_example() -> str:
    """The Python block under the README's ``readme-example`` marker."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- readme-example:.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no readme-example block"
    return match.group(1)


@pytest.fixture(scope="module")
def fashion_mnist():
    """16 training batches of 64 and 1,000 test images, normalised as vit-micro expects (mean 0.5, std 0.5)."""
    split = data.load(make_config(*QUICK, f"data.train_size={BATCH * STEPS_PER_EPOCH}", "data.test_size=1000").data)
    normalise = lambda images: (images.float() / 255 - 0.5) / 0.5  # noqa: E731
    loader = list(zip(normalise(split.train.inputs).split(BATCH), split.train.labels.split(BATCH)))
    return loader, normalise(split.test.inputs), split.test.labels


def run_example(code: str, loader) -> dict:
    model = AutoModelForImageClassification.from_pretrained(asset("vit-micro"))
    namespace = {"model": model, "loader": loader, "torch": torch, "F": F}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102  (our own README)
    return namespace


def accuracy(model, images, labels) -> float:
    with torch.inference_mode():
        return 100.0 * float((model.eval()(pixel_values=images).logits.argmax(-1) == labels).float().mean())


def test_the_readme_example_prunes_vit_micro_in_its_own_loop(fashion_mnist):
    loader, test_images, test_labels = fashion_mnist
    ns = run_example(readme_example(), loader)
    controller = ns["controller"]
    assert controller.steps == 3 * STEPS_PER_EPOCH and controller.schedule.q_steps == STEPS_PER_EPOCH
    assert float(controller.beta) == 0 and controller.finished
    figures = controller.figures()
    assert figures["layers"] == 24 and figures["zero_fraction"] == pytest.approx(0.9, abs=1e-3)
    pruned = [m.effective_weight() for m in (ns["model"].get_submodule(n) for n in controller.names)]
    assert all(float((w == 0).float().mean()) == pytest.approx(0.9, abs=2e-3) for w in pruned)  # what the model runs
    assert accuracy(ns["model"], test_images, test_labels) > 70  # dense vit-micro: 89 %; chance: 10 %


def test_the_same_loop_with_low_rank_drops_the_originals_from_model_and_optimizer(fashion_mnist):
    loader, test_images, test_labels = fashion_mnist
    code = readme_example().replace("Prune(ratio=0.9)", "LowRank(rank=8)").replace("import compress_, Prune,",
                                                                                    "import compress_, LowRank,")
    ns = run_example(code, loader)
    model, optimizer, controller = ns["model"], ns["optimizer"], ns["controller"]
    branches = [model.get_submodule(n) for n in controller.names]
    assert all(isinstance(m, BlendedBranches) and m.original is None for m in branches)
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {id(p) for p in model.parameters()}
    assert set(map(id, optimizer.state)) <= {id(p) for p in model.parameters()}
    # rank 8 factors of 4 blocks: q, k, v, o (64 x 64) and the MLP's 64 x 256 and 256 x 64
    assert controller.figures()["params_after"] == 4 * (4 * 8 * (64 + 64) + 2 * 8 * (64 + 256))
    assert accuracy(model, test_images, test_labels) > 70
