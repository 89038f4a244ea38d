"""The dense model as teacher (the ``distill`` settings; issue 21): the compressed student learns from the task and
from the dense model's softened outputs,

    loss = (1 − α)·task + α·T²·KL(softmax(teacher / T) ‖ softmax(student / T))

as Hinton et al. (2015) and SparseML's ``DistillationModifier`` (hardness α = 0.5, temperature 2.0) define it; T²
keeps the soft term's gradient on the task term's scale. The teacher is a frozen copy of the model *as loaded*,
taken before ``compress_``: for pruning and quantization the dense latent weights are the very parameters the
student trains, so the blended network cannot be its own teacher.

For any training loop (torch only)::

    teacher = vcon.distill.teacher_of(model)            # before compress_
    controller = compress_(model, ...)
    ...
    with torch.no_grad():
        soft = teacher(pixel_values=x).logits
    out = model(pixel_values=x).logits
    loss = Distill(alpha=0.5, temperature=2.0).loss(out, soft, F.cross_entropy(out, y))
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from vcon.schema import check_fields, number, setting


@dataclasses.dataclass(frozen=True)
class Distill:
    """``alpha``: the weight of the distillation term against the task loss, in [0, 1] (0: the task alone);
    ``temperature``: T > 0, the softening of both distributions."""

    alpha: float = setting(number(0, 1, what="a weight in [0, 1]", means="0: the task loss alone"), 0.5)
    temperature: float = setting(number(above=0, what="a temperature > 0"), 2.0)

    def __post_init__(self) -> None:
        check_fields(self, "distill")

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """``(1 − α)·task + α·T²·KL(teacher/T ‖ student/T)``, the KL averaged over the batch (``student`` and
        ``teacher``: logits, batch first; ``task``: the task loss already computed, e.g. against MixUp's soft
        targets). The teacher's logits carry no gradient."""
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student.float() / t, dim=-1), F.log_softmax(teacher.detach().float() / t, dim=-1),
                        log_target=True, reduction="batchmean")
        return (1 - self.alpha) * task + self.alpha * t * t * soft


def teacher_of(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` as it is now (call it before ``compress_``): evaluation mode, no gradients, its
    own parameters, so that training the student never moves it."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher
