"""RandAugment on a batch on the training device, with per-image random draws.

Reproduces torchvision's ``transforms.RandAugment(num_ops, magnitude, num_magnitude_bins,
interpolation=NEAREST, fill=None)``: for each of ``num_ops`` layers, every image draws one of the 14 operations
uniformly (Identity, ShearX, ShearY, TranslateX, TranslateY, Rotate, Brightness, Color, Contrast, Sharpness,
Posterize, Solarize, AutoContrast, Equalize) and, for signed operations, a sign with probability 1/2, and the
operation is applied at the fixed magnitude ``bins[magnitude]`` of torchvision's augmentation space.

Batched: a layer computes every operation for the whole batch (cheap at 32x32) and picks each image's result with
one gather. The five geometric operations are one per-image inverse affine matrix (identity for the others), so
they cost one ``affine_grid`` + ``grid_sample`` per layer. The random draws are two tensors per call, drawn at once
from the input's device RNG (or a given generator); shapes are static and there is no data-dependent Python control
flow, so ``torch.compile`` traces it as one graph. With a generator, dynamo runs the draw eagerly (one graph break)
and the compiled module draws exactly what the eager one does; without one, inductor's own RNG draws (a different
stream than eager's, same distribution).

Why not kornia's RandAugment: it draws its operations once per call, so the whole batch gets the same ones unless
it is called per small chunk (many small launches, Python overhead, and still not torchvision's distribution).

Where this differs from torchvision on uint8 images (inputs here are floats in [0, 1], usually from uint8):
- Blends (Brightness, Color, Contrast, Sharpness) and AutoContrast stay in float; torchvision truncates their
  results to uint8 (and rounds the grayscale / sharpness blur), so results differ by less than about 1/255.
- Posterize, Solarize and Equalize round to the nearest 1/255 level first (exact on uint8-valued inputs), so a
  second layer sees quantised values after those but float values after a blend, where torchvision always
  works on uint8.
- TranslateX/Y's pixel count is computed in double from the image size; torchvision takes it from a float32
  ``linspace``, which could only differ where ``150/331 * size * magnitude / (bins - 1)`` is within float32
  rounding of an integer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")  # torchvision's order
SIGNED = OPS[1:10]  # torchvision negates their magnitude with probability 1/2
GEOMETRIC = OPS[1:6]
# the candidate images a layer computes; every geometric op shares one (the affine warp)
CANDIDATES = ("Identity", "Affine") + OPS[6:]
CANDIDATE_OF_OP = [CANDIDATES.index("Affine" if op in GEOMETRIC else op) for op in OPS]


def grayscale(x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W); torchvision's rgb_to_grayscale weights
    return x if x.shape[1] == 1 else 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * degenerate).clamp(0, 1)  # torchvision's _blend on floats


def sharpness_degenerate(x: torch.Tensor) -> torch.Tensor:
    """x smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13 inside, the original on the one-pixel border."""
    h, w = x.shape[-2:]
    if h <= 2 or w <= 2:  # torchvision: no inside, no change
        return x
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]  # the 3x3 box sum, separably: cheaper than a
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # depthwise conv2d on the CPU
    out = x.clone()
    out[..., 1:-1, 1:-1] = (box + 4 * x[..., 1:-1, 1:-1]) / 13
    return out


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    flat = hi <= lo  # constant channels are left alone
    return torch.where(flat, x, (x - lo) / torch.where(flat, 1, hi - lo)).clamp(0, 1)


def equalize(q: torch.Tensor) -> torch.Tensor:
    """torchvision's equalize on uint8 levels ``q`` (integer-valued, int64), per image and channel, batched."""
    b, c, h, w = q.shape
    q = q.reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=q.dtype, device=q.device).scatter_add_(1, q, torch.ones_like(q))
    # torchvision: step = sum of the histogram without its last non-empty bin (the channel's maximum) // 255
    last = hist.gather(1, q.amax(1, keepdim=True))
    step = (h * w - last) // 255
    lut = (hist.cumsum(1) + step // 2) // step.clamp(min=1)
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)  # shifted by one level, as torchvision
    out = torch.where(step == 0, q, lut.gather(1, q))  # step == 0: (nearly) constant channel, left alone
    return out.reshape(b, c, h, w)


class RandAugment(nn.Module):
    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> None:
        super().__init__()
        assert 0 <= magnitude < num_magnitude_bins, (magnitude, num_magnitude_bins)
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins

        def bins(top: float) -> float:
            return torch.linspace(0.0, top, num_magnitude_bins)[magnitude].item()

        self.shear = bins(0.3)
        self.degrees = bins(30.0)
        self.enhance = bins(0.9)  # Brightness, Color, Contrast, Sharpness: factor 1 ± enhance
        self.translate = magnitude / (num_magnitude_bins - 1) * 150.0 / 331.0  # times the image size, truncated
        steps = (torch.arange(num_magnitude_bins) / ((num_magnitude_bins - 1) / 4)).round().int()
        self.bits = int(8 - steps[magnitude])
        self.threshold = torch.linspace(255.0, 0.0, num_magnitude_bins)[magnitude].item()  # on the 0..255 scale
        self.register_buffer("candidate_of_op", torch.tensor(CANDIDATE_OF_OP), persistent=False)

    def draw(self, batch: int, device: torch.device | str | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's operations, (num_ops, batch) indices into ``OPS``, and their signs (±1.0, same shape)."""
        ops = torch.randint(len(OPS), (self.num_ops, batch), device=device, generator=generator)
        signs = torch.randint(2, (self.num_ops, batch), device=device, generator=generator) * 2.0 - 1.0
        return ops, signs

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, H, W) floats in [0, 1], C = 1 or 3, on any device; the same shape, dtype and range."""
        return self.augment(x, *self.draw(x.shape[0], x.device, generator))

    def augment(self, x: torch.Tensor, ops: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """The layers given by ``draw``'s ``ops`` and ``signs`` (one row per layer), in order. (Not ``apply``:
        nn.Module.apply recurses into children by that name.)"""
        for layer in range(ops.shape[0]):
            x = self._layer(x, ops[layer], signs[layer])
        return x

    def _affine(self, x: torch.Tensor, op: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """Each image's geometric op as one inverse affine map (output pixel -> input pixel), nearest, zero fill."""
        b, _, h, w = x.shape

        def is_op(name: str) -> torch.Tensor:
            return (op == OPS.index(name)).to(x.dtype)

        shear_x, shear_y = sign * self.shear * is_op("ShearX"), sign * self.shear * is_op("ShearY")
        # torchvision: translate=[int(magnitude), 0] with a signed magnitude, so truncated towards zero
        tx = sign * float(int(self.translate * w)) * is_op("TranslateX")
        ty = sign * float(int(self.translate * h)) * is_op("TranslateY")
        angle = sign * math.radians(self.degrees) * is_op("Rotate")
        cos, sin = angle.cos(), angle.sin()
        # In pixel coordinates centred on the image (torchvision's convention): rotation about the centre,
        # shears about the top-left corner (center=[0, 0] is (-w/2, -h/2) here), translation by -t. At most one
        # of the terms is non-zero per image, so adding them composes nothing.
        m00, m01, m02 = cos, shear_x - sin, shear_x * h / 2 - tx
        m10, m11, m12 = shear_y + sin, cos, shear_y * w / 2 - ty
        # to affine_grid's normalised coordinates (align_corners=False: ±1 at the outer pixel edges)
        theta = torch.stack([m00, m01 * h / w, m02 * 2 / w, m10 * w / h, m11, m12 * 2 / h], 1).view(b, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def _layer(self, x: torch.Tensor, op: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        factor = (1 + sign * self.enhance).view(b, 1, 1, 1)
        gray = grayscale(x)
        q = (x * 255).round()  # uint8 levels, for the ops torchvision defines on uint8
        step = 2.0 ** (8 - self.bits)
        candidates = {
            "Identity": x,
            "Affine": self._affine(x, op, sign),
            "Brightness": (x * factor).clamp(0, 1),  # a blend with black
            "Color": x if x.shape[1] == 1 else blend(x, gray.expand_as(x), factor),  # no-op on grayscale
            "Contrast": blend(x, gray.mean(dim=(1, 2, 3), keepdim=True), factor),
            "Sharpness": blend(x, sharpness_degenerate(x), factor),
            "Posterize": torch.floor(q / step) * step / 255,  # keep the top `bits` bits
            "Solarize": torch.where(q >= self.threshold, 1 - x, x),
            "AutoContrast": autocontrast(x),
            "Equalize": equalize(q.long()).to(x.dtype) / 255,
        }
        stacked = torch.stack([candidates[name] for name in CANDIDATES])  # (K, B, C, H, W)
        return stacked[self.candidate_of_op[op], torch.arange(b, device=x.device)]
