"""The dense model as teacher (the ``distill`` config group): the compressed student learns from the task and from
the dense model's softened outputs,

    loss = (1 − α)·task + α·T²·KL(softmax(teacher / T) ‖ softmax(student / T)) + λ·mean_b MSE(h_b, h_b^teacher)

as Hinton et al. (2015) and SparseML's ``DistillationModifier`` (hardness α = 0.5, temperature 2.0) define it; T²
keeps the soft term's gradient on the task term's scale. The last term (``hidden`` = λ, 0: off) matches each
block's output hidden states to the teacher's, as TinyBERT-style layer distillation does (every position counts,
padding included). The teacher is a frozen copy of the model *as loaded*, taken before ``compress_``: for pruning
and quantization the dense latent weights are the very parameters the student trains, so the blended network
cannot be its own teacher.

In any training loop (torch only; the model a transformers one, returning ``.logits``)::

    teacher = Teacher(model, Distill(alpha=0.5, temperature=2.0))   # before compress_
    controller = compress_(model, ...)
    ...
    loss = teacher.loss(model, {"pixel_values": x}, y)               # the student's forward, the teacher's, the loss
    loss.backward()

With the Hugging Face ``Trainer``: ``vcon.hf.DistillTrainer``.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vcon.schema import check_fields, number, setting


@dataclasses.dataclass(frozen=True)
class Distill:
    """``alpha``: the weight of the distillation term against the task loss, in [0, 1] (0: the task alone);
    ``temperature``: T > 0, the softening of both distributions; ``hidden``: λ ≥ 0, the weight of matching the
    blocks' hidden states (0: off)."""

    alpha: float = setting(number(0, 1, what="a weight in [0, 1]", means="0: the task loss alone"), 0.5)
    temperature: float = setting(number(above=0, what="a temperature > 0"), 2.0)
    hidden: float = setting(number(0, what="a weight >= 0", means="0: logits alone"), 0.0)

    def __post_init__(self) -> None:
        check_fields(self, "distill")

    @property
    def on(self) -> bool:
        """Whether the teacher counts at all (α = 0 and λ = 0: the task loss alone, no teacher is built)."""
        return self.alpha > 0 or self.hidden > 0

    def describe(self) -> str:
        """'teacher α 0.5 T 2', with ' λ 1 (hidden states)' where the blocks' outputs are matched too."""
        return f"teacher α {self.alpha:g} T {self.temperature:g}" + (f" λ {self.hidden:g} (hidden states)"
                                                                    if self.hidden else "")

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, task: torch.Tensor,
             student_hidden: Sequence[torch.Tensor] = (), teacher_hidden: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """The loss above, the KL averaged over the batch (``student`` and ``teacher``: logits, batch first;
        ``task``: the task loss already computed, e.g. against MixUp's soft targets; the hidden states: one tensor a
        block, matched pairwise). Nothing of the teacher's carries a gradient."""
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student.float() / t, dim=-1), F.log_softmax(teacher.detach().float() / t, dim=-1),
                        log_target=True, reduction="batchmean")
        total = (1 - self.alpha) * task + self.alpha * t * t * soft
        if self.hidden > 0:
            pairs = list(zip(student_hidden, teacher_hidden, strict=True))
            total = total + self.hidden * sum(F.mse_loss(s.float(), h.detach().float()) for s, h in pairs) / len(pairs)
        return total


def teacher_of(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` as it is now (call it before ``compress_``): evaluation mode, no gradients, its
    own parameters, so that training the student never moves it."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


class Teacher:
    """The dense model teaching a student: a frozen copy of ``model`` (before ``compress_``) and the settings.
    ``loss`` runs both forwards on one batch and returns the distillation loss (the student's with gradients)."""

    def __init__(self, model: nn.Module, settings: Distill) -> None:
        self.model, self.settings = teacher_of(model), settings

    def loss(self, student: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """``inputs``: the model's keyword arguments (``pixel_values``, ``input_ids``...); ``targets``: class indices
        or soft targets (MixUp), what ``F.cross_entropy`` takes."""
        return self.forward(student, inputs, targets)[0]

    def forward(self, student: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> tuple[Any, Any]:
        """The loss and the student's outputs (a Trainer's evaluation wants its logits too)."""
        hidden = self.settings.hidden > 0
        out = student(**inputs, output_hidden_states=hidden)
        with torch.no_grad():
            reference = self.model(**inputs, output_hidden_states=hidden)
        task = F.cross_entropy(out.logits.float(), targets)
        return self.settings.loss(out.logits, reference.logits, task, *_blocks(out, reference, hidden)), out


def _blocks(out: Any, reference: Any, hidden: bool) -> tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]:
    """The blocks' output hidden states of both (transformers puts the embeddings' output first: left out)."""
    return (out.hidden_states[1:], reference.hidden_states[1:]) if hidden else ((), ())
