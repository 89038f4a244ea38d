"""Batches on the training device: uint8 images in, normalised model-sized floats out (``train.augment``).

RandAugment (``vcon/data/randaugment.py``: torchvision's, with per-image draws, batched) runs at the images' native size,
before the resize to the model's, where it is 49 times cheaper at CIFAR's 32 px than at 224 px; the reference
resizes first. Geometric and colour operations commute with the resize up to interpolation; Sharpness's 3x3 blur
is the exception (at 224 px it barely changes an upsampled image). MixUp mixes the batch with a shuffled copy of
itself. Everything stays on the device: no copies to or from the host per batch.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vcon.data.randaugment import RandAugment
from vcon.errors import require


class Pipeline:
    def __init__(self, augment: Any, image_size: int, channels: int, mean: list[float], std: list[float],
                 num_classes: int, device: torch.device, compiled: bool = False) -> None:
        self.image_size, self.channels, self.num_classes, self.device = image_size, channels, num_classes, device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.classes = torch.arange(num_classes, device=device)
        self.mixup_alpha = float(augment.mixup_alpha)
        require(self.mixup_alpha >= 0, "train.augment.mixup_alpha", augment.mixup_alpha, "a number >= 0 (0: off)")
        self.randaugment = None
        if augment.randaugment.enabled:
            ra = augment.randaugment
            require(isinstance(ra.n, int) and ra.n >= 1, "train.augment.randaugment.n", ra.n, "an integer >= 1")
            require(isinstance(ra.m, int) and 0 <= ra.m <= 30, "train.augment.randaugment.m", ra.m,
                    "an integer magnitude in [0, 30] (torchvision's 31 bins)")
            self.randaugment = RandAugment(num_ops=ra.n, magnitude=ra.m).to(device)
            if compiled:  # its 14 operations per layer fuse into a few kernels (1.8x faster even on this CPU)
                self.randaugment = torch.compile(self.randaugment)

    def _to_model_input(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255)
        if x.shape[1] != self.channels:  # grey to RGB by repetition, RGB to grey by the mean
            x = x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        if augment and self.randaugment is not None:
            x = self.randaugment(x)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return (x - self.mean) / self.std

    def draw_mix(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """MixUp's draws for one batch, on the device: (λ, permutation), or () when MixUp is off. Drawn on the host
        (λ from torch's global generator, the permutation from ``generator``, whose state a mid-epoch checkpoint
        keeps) and passed to ``train_batch`` as tensors, so that a CUDA graph of the step reads new ones each time."""
        if self.mixup_alpha == 0:
            return ()
        lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
        perm = torch.randperm(batch, generator=generator).to(self.device, non_blocking=True)
        return torch.full((), lam, device=self.device), perm

    def train_batch(self, images: torch.Tensor, labels: torch.Tensor, *mix: torch.Tensor
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Augmented inputs (the model's keyword arguments) and target distributions (one-hot, mixed by ``mix``,
        ``draw_mix``'s (λ, permutation))."""
        x = self._to_model_input(images, augment=True)
        # one-hot by comparison: F.one_hot checks the label range on the host on CPUs, a read a CUDA graph cannot
        # hold; labels are in range by construction (num_classes is the largest label + 1)
        y = (labels.to(self.device)[:, None] == self.classes).float()
        if mix:
            lam, perm = mix
            x = torch.lerp(x[perm], x, lam)
            y = torch.lerp(y[perm], y, lam)
        return {"pixel_values": x}, y

    def eval_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_values": self._to_model_input(images, augment=False)}
