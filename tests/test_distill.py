"""The distillation loss against a hand computation, the frozen teacher, bad settings (vcon/distill.py), and runs
taught by the dense model: every method, a recipe, resume, run identities (the ``distill`` config group)."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import QUICK, make_config, requires_fashion_mnist, tiny_vit

from vcon import Prune, Schedule, compress_, model
from vcon.app import identity, job, sweep
from vcon.distill import Distill, Teacher, teacher_of
from vcon.errors import ConfigError
from vcon.train import checkpoint
from vcon.train.distributed import SINGLE
from vcon.train.loop import Training


def by_hand(student, teacher, task, alpha, t):
    """The formula written out, example by example: (1 − α)·task + α·T²·mean_i Σ_k p_ik (log p_ik − log q_ik)."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(v / t) for v in t_row]
        q = [math.exp(v / t) for v in s_row]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        total += sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))
    return (1 - alpha) * task + alpha * t * t * total / len(student)


@pytest.mark.parametrize("alpha, t", [(0.5, 2.0), (0.0, 1.0), (1.0, 4.0), (0.3, 0.5)])
def test_the_loss_is_the_formula(alpha, t):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g) * 3
    task = torch.tensor(1.25)
    got = Distill(alpha=alpha, temperature=t).loss(student, teacher, task)
    assert float(got) == pytest.approx(by_hand(student, teacher, 1.25, alpha, t), rel=1e-5)


def test_the_teacher_is_frozen_and_the_gradient_reaches_only_the_student():
    model = tiny_vit(2)
    teacher = teacher_of(model)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    controller = compress_(model, Prune(ratio=0.5), schedule=Schedule("linear", 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    distill, x, y = Distill(), torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        with torch.no_grad():
            soft = teacher(pixel_values=x).logits
        out = model(pixel_values=x).logits
        distill.loss(out, soft, F.cross_entropy(out, y)).backward()
        optimizer.step()
        optimizer.zero_grad()
        controller.step(optimizer)
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)  # it learnt
    assert all(type(m).__name__ != "BlendedLinear" for m in teacher.modules())  # the dense model, as loaded


@pytest.mark.parametrize("settings, message", [
    ({"alpha": 1.5}, "distill.alpha=1.5 is not allowed: expected a weight in [0, 1]"),
    ({"alpha": -0.1}, "distill.alpha=-0.1 is not allowed"),
    ({"temperature": 0}, "distill.temperature=0 is not allowed: expected a temperature > 0"),
])
def test_bad_settings_are_refused_naming_them(settings, message):
    with pytest.raises(ConfigError) as refused:
        Distill(**settings)
    assert message in str(refused.value)


def test_the_hidden_state_term_is_the_mean_squared_error_over_blocks():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    hs = [torch.randn(3, 5, 8, generator=g) for _ in range(2)]
    ht = [torch.randn(3, 5, 8, generator=g) for _ in range(2)]
    got = Distill(alpha=0.3, temperature=2.0, hidden=0.7).loss(student, teacher, torch.tensor(0.5), hs, ht)
    mse = sum(((a - b) ** 2).mean().item() for a, b in zip(hs, ht)) / 2
    assert float(got) == pytest.approx(by_hand(student, teacher, 0.5, 0.3, 2.0) + 0.7 * mse, rel=1e-5)


def test_the_teacher_runs_both_forwards_and_matches_the_blocks_outputs():
    model = tiny_vit(2)
    settings = Distill(alpha=0.4, temperature=3.0, hidden=2.0)
    teacher = Teacher(model, settings)
    compress_(model, Prune(ratio=0.7), schedule=Schedule("linear", 0))  # β = 0: the student differs from it
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    out = model(pixel_values=x, output_hidden_states=True)
    reference = teacher.model(pixel_values=x, output_hidden_states=True)
    assert len(out.hidden_states) == 3  # the embeddings' output, then one a block: the blocks' are matched
    expected = settings.loss(out.logits, reference.logits, F.cross_entropy(out.logits, y), out.hidden_states[1:],
                             reference.hidden_states[1:])
    assert float(teacher.loss(model, {"pixel_values": x}, y).detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


def test_bad_settings_in_a_run_config_are_refused_before_anything_loads():
    for override, message in [("distill.alpha=1.5", "distill.alpha=1.5 is not allowed: expected a weight in [0, 1]"),
                              ("distill.temperature=0", "distill.temperature=0 is not allowed: expected a temperature"),
                              ("distill.hidden=-1", "distill.hidden=-1 is not allowed: expected a weight >= 0")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            job.check(make_config(override))


def test_run_ids_stay_as_they_were_without_a_teacher_and_say_kd_with_one():
    plain = identity.identity(make_config())
    assert "distill" not in plain and "distill" not in identity.identity(make_config("distill.temperature=5"))
    taught = make_config("distill=logits")
    assert identity.identity(taught)["distill"] == {"alpha": 0.5, "temperature": 2.0, "hidden": 0}
    assert "_prune-q3-kd_s0_" in identity.run_id(taught)
    # a dense run has no teacher: the same run with or without the setting
    assert identity.run_id(make_config("compression=none", "distill=logits")) == identity.run_id(
        make_config("compression=none"))
    assert sweep.describe(identity.identity(taught)) == ("prune 0.9 layer", "VCON Q=3 ep linear + teacher α 0.5 T 2")
    assert sweep.describe(identity.identity(make_config("distill=hidden", "vcon.epochs=0")))[1] == (
        "one-shot + teacher α 0.5 T 2 λ 1 (hidden states)")


def quick(folder, *overrides, on_epoch_end=None):
    return job.run(make_config(*QUICK, "distill=logits", *overrides), folder, on_epoch_end=on_epoch_end)


@requires_fashion_mnist
@pytest.mark.parametrize("overrides", [
    ("vcon.epochs=0",),  # one-shot
    ("method=gradual", "compression=lrd", "compression.rank=4"),
    ("compression=recipe-attention-binary-mlp-prune", "distill=hidden"),  # VCON, a recipe, the blocks' outputs too
], ids=["one-shot", "gradual", "recipe"])
def test_each_method_trains_taught_by_the_dense_model(tmp_path, overrides):
    results = quick(tmp_path, *overrides)
    assert "-kd_s0_" in identity.run_id(make_config(*QUICK, "distill=logits", *overrides))
    assert math.isfinite(results["history"][-1]["loss"]) and results["beta"] == 0.0
    assert results["test_acc"] > 30  # it learns (10 classes; the shipped dense model is at 89 %)


class Interrupted(Exception):
    pass


def stop_after_one(epoch):
    if epoch == 1:
        raise Interrupted


@pytest.mark.slow
@requires_fashion_mnist
def test_a_taught_run_resumed_mid_transition_ends_like_an_uninterrupted_one(tmp_path):
    overrides = ("train.epochs=3", "vcon.epochs=2")
    whole = quick(tmp_path / "whole", *overrides)
    with pytest.raises(Interrupted):
        quick(tmp_path / "split", *overrides, on_epoch_end=stop_after_one)
    resumed = quick(tmp_path / "split", *overrides)
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in whole["history"]], rel=1e-5)
    a, b = checkpoint.load(tmp_path / "whole")["model"], checkpoint.load(tmp_path / "split")["model"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["test_acc"] == whole["test_acc"]


@requires_fashion_mnist
def test_the_teacher_is_the_dense_model_as_loaded_and_training_never_moves_it(tmp_path):
    cfg = make_config(*QUICK, "distill=logits", "train.epochs=1")
    compression, method = job.check(cfg)
    training = Training(cfg, tmp_path, identity.identity(cfg), compression, method, torch.device("cpu"), SINGLE, None)
    training.tracker = None
    loaded = model.build(cfg.model, 10).state_dict()
    training.fit(None)
    teacher = training.teacher.model
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert teacher.state_dict().keys() == loaded.keys()
    assert all(torch.equal(v, loaded[k]) for k, v in teacher.state_dict().items())
    student = training.net.state_dict()
    assert not all(torch.equal(student[k], loaded[k]) for k in loaded if k in student)  # while the student learnt
