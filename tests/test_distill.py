"""The distillation loss against a hand computation, the frozen teacher, and bad settings (vcon/distill.py)."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_vit

from vcon import Prune, Schedule, compress_
from vcon.distill import Distill, teacher_of
from vcon.errors import ConfigError


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
