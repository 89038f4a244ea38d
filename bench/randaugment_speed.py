"""Speed of vcon.data.randaugment.RandAugment against kornia's RandAugment called per chunk of 16 images.

    PYTHONPATH=. python bench/randaugment_speed.py [--repeats 50]

Median milliseconds per batch of 128 images (3x32x32 and 1x28x28), on the CPU, and on CUDA when available (eager
and torch.compile). kornia is optional: its rows are left out when it is not installed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vcon.data.randaugment import RandAugment


def median_ms(fn, x: torch.Tensor, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=16, help="kornia's chunk size (vcon/data/augment.py's default)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from kornia.augmentation.auto import RandAugment as KorniaRandAugment
    except ImportError:
        KorniaRandAugment = None

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        ours = RandAugment(num_ops=2, magnitude=9).to(device)
        candidates = {"vcon eager": ours}
        if device == "cuda":
            candidates["vcon compiled"] = torch.compile(ours)
        if KorniaRandAugment is not None:
            kornia = KorniaRandAugment(n=2, m=9).to(device)
            candidates[f"kornia per {args.chunk}"] = lambda x, k=kornia: torch.cat([k(c) for c in x.split(args.chunk)])
        for shape in [(args.batch, 3, 32, 32), (args.batch, 1, 28, 28)]:
            x = torch.randint(0, 256, shape, device=device).float() / 255
            for name, fn in candidates.items():
                if name.startswith("kornia") and shape[1] == 1:  # kornia's Color op needs 3 channels
                    fn, name = (lambda x, fn=fn: fn(x.expand(-1, 3, -1, -1))), name + " (x3 ch)"
                rows.append((device, "x".join(map(str, shape)), name, median_ms(fn, x, args.repeats)))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"{'device':<7}{'batch':<14}{'implementation':<24}{'median ms':>10}")
    for device, shape, name, ms in rows:
        print(f"{device:<7}{shape:<14}{name:<24}{ms:>10.2f}")


if __name__ == "__main__":
    main()
