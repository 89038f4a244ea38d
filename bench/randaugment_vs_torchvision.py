"""Each op of vcon's RandAugment against torchvision's own _apply_op, per image on uint8, on the CPU and CUDA.

Run it where torchvision is installed (the GPU machines; it cannot be installed beside this project's CPU torch)."""
import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import RandAugment as TV
from torchvision.transforms.autoaugment import _apply_op

from vcon.data.randaugment import OPS, RandAugment

print("torchvision", torchvision.__version__, "torch", torch.__version__)
g = torch.Generator().manual_seed(0)
for c, size in ((3, 32), (1, 28)):
    b = 64
    lo = torch.randint(0, 128, (b, c, 1, 1), generator=g)
    span = torch.randint(1, 128, (b, c, 1, 1), generator=g)
    x8 = (lo + torch.rand(b, c, size, size, generator=g) * span).floor().to(torch.uint8)
    x8[: b // 4] = torch.randint(0, 256, (b // 4, c, size, size), generator=g).to(torch.uint8)
    space = TV(num_ops=2, magnitude=9)._augmentation_space(31, (size, size))
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        xd = x8.to(device)
        for op in OPS:
            mags, signed = space[op]
            for sign in ((1.0, -1.0) if signed else (1.0,)):
                mag = (float(mags[9].item()) if mags.ndim > 0 else 0.0) * sign
                ref = torch.stack([_apply_op(im, op, mag, interpolation=InterpolationMode.NEAREST, fill=None)
                                   for im in xd]).float()
                ours = RandAugment(num_ops=1).to(device).augment(
                    xd.float() / 255, torch.full((1, b), OPS.index(op), device=device),
                    torch.full((1, b), sign, device=device)) * 255
                d = (ours - ref).abs()
                print(f"C={c} {device:<4} {op:<12} {sign:+.0f} max|diff| {d.max():7.3f} levels, "
                      f"pixels >1 level off {(d > 1.001).float().mean():.5f}, mean diff {(ours - ref).mean():+.3f}")
