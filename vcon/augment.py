"""Batches on the training device: uint8 images in, normalised model-sized floats out (``train.augment``).

RandAugment runs at the images' native size, before the resize, where it is cheapest; MixUp mixes the batch with a
shuffled copy of itself. kornia's RandAugment draws its operations once per call, so the batch is augmented in
``chunk``-sized pieces to keep operations varied within a batch, closer to torchvision's per-image draws.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vcon.errors import require


class Pipeline:
    def __init__(self, augment: Any, image_size: int, channels: int, mean: list[float], std: list[float],
                 num_classes: int, device: torch.device) -> None:
        self.image_size, self.channels, self.num_classes, self.device = image_size, channels, num_classes, device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.mixup_alpha = float(augment.mixup_alpha)
        require(self.mixup_alpha >= 0, "train.augment.mixup_alpha", augment.mixup_alpha, "a number >= 0 (0: off)")
        self.randaugment = None
        if augment.randaugment.enabled:
            from kornia.augmentation.auto import RandAugment

            ra = augment.randaugment
            require(0 < ra.m < 30, "train.augment.randaugment.m", ra.m, "a magnitude in (0, 30)")
            self.randaugment = RandAugment(n=ra.n, m=ra.m).to(device)
            self.chunk = ra.chunk

    def _to_model_input(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255)
        if x.shape[1] != self.channels:  # grey to RGB by repetition, RGB to grey by the mean
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        if augment and self.randaugment is not None:
            x = torch.cat([self.randaugment(c) for c in x.split(self.chunk)])
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return (x - self.mean) / self.std

    def train_batch(self, images: torch.Tensor, labels: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented inputs and target distributions (one-hot, mixed when MixUp is on)."""
        x = self._to_model_input(images, augment=True)
        y = F.one_hot(labels.to(self.device), self.num_classes).float()
        if self.mixup_alpha > 0:
            lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
            perm = torch.randperm(len(x), generator=generator).to(self.device)
            x = torch.lerp(x[perm], x, lam)
            y = torch.lerp(y[perm], y, lam)
        return x, y

    def eval_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self._to_model_input(images, augment=False)
