"""Streaming from disk (``vcon/data/stream.py``): memory against the folder's size, and images/s read, decoded and cropped.

    python bench/stream_speed.py                        # 5,000 and 50,000 generated 224 px JPEGs, 2 workers
    python bench/stream_speed.py --sizes 500 5000 --images 1000

For each folder size a fresh process scans the folder as ``data=imagenet`` does and streams ``--images`` training
images through the DataLoader workers (random resized crops to 224, flips), reporting the training process's RSS
after the scan (what grows with the folder: the file list) and at its peak, the largest worker's peak RSS, and the
images/s. The in-memory source is timed on the same crops gathered from a uint8 tensor. The folders are generated
once into ``--root`` (JPEG quality 90, about 400x340 px, ImageNet's mean size, of smooth colour plus noise: ~70 KB
each, ImageNet's ~110 KB) and kept for later runs. Results go to bench/results/.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def generate(folder: Path, count: int) -> None:
    """``count`` JPEGs in train/<class>/ (and 10 per class in val/), unless the folder is already complete."""
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(CLASSES)]
    for split, per_class in (("train", count // CLASSES), ("val", 10)):
        for c in range(CLASSES):
            (folder / split / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                size = (400 + 16 * (i % 7), 340 + 8 * (i % 5))  # about ImageNet's mean size
                smooth = np.asarray(Image.fromarray(base[c]).resize(size, Image.BICUBIC), dtype=np.int16)
                noisy = np.clip(smooth + rng.integers(-24, 25, smooth.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(folder / split / f"n{c:08d}" / f"{i:06d}.JPEG", quality=90)
    done.touch()


def resident_mib() -> float:
    """This process's resident memory now (VmRSS)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def measure(folder: str, images: int, workers: int, batch: int) -> dict:
    """In this process: scan as data=imagenet does, stream ``images`` training images, report RSS and speed."""
    import torch
    from omegaconf import OmegaConf

    from vcon.data import stream

    cfg = OmegaConf.create({"path": folder, "image_size": 224, "workers": workers, "val_size": 0, "split_seed": 0,
                            "bad_images": "stop"})
    started = time.perf_counter()
    train, _ = stream.folder(cfg, ("val",))
    scan_s = time.perf_counter() - started
    after_scan = resident_mib()  # what grows with the folder: its file list
    order = torch.randperm(len(train))[:images]
    started, seen, kept = time.perf_counter(), 0, []
    for crops, _ in train.batches(order, batch, salt=1):
        seen += len(crops)
        if not kept:
            kept.append(crops)
    stream_s = time.perf_counter() - started
    memory = torch.cat(kept)  # the in-memory source on the same crops: gather a batch by index from uint8
    index = torch.randint(0, len(memory), (batch,))
    started = time.perf_counter()
    for _ in range(200):
        memory[index].contiguous()
    memory_rate = 200 * batch / (time.perf_counter() - started)
    return {"files": len(train), "images": seen, "scan_s": scan_s, "streamed_images_per_s": seen / stream_s,
            "in_memory_images_per_s": memory_rate, "workers": workers,
            "rss_after_scan_mib": after_scan, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--images", type=int, default=3000, help="training images streamed per folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--root", default="/tmp/vcon-stream-bench")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the child process's folder
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.images, args.workers, args.batch)))
        return
    rows = []
    for size in args.sizes:
        folder = Path(args.root) / f"jpeg-{size}"
        started = time.perf_counter()
        generate(folder, size)
        print(f"{folder}: {size:,} JPEGs ready ({time.perf_counter() - started:.0f} s)", flush=True)
        out = subprocess.run([sys.executable, __file__, "--measure", str(folder), "--images", str(args.images),
                              "--workers", str(args.workers), "--batch", str(args.batch)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  {row['files']:>7,} files: scan {row['scan_s']:.1f} s, "
              f"RSS {row['rss_after_scan_mib']:.0f} MiB after it, "
              f"peak {row['peak_rss_mib']:.0f} MiB "
              f"(a worker: {row['peak_worker_rss_mib']:.0f} MiB), "
              f"streamed {row['streamed_images_per_s']:.0f} images/s with {row['workers']} workers, in memory "
              f"{row['in_memory_images_per_s']:.0f} images/s", flush=True)
    if len(rows) > 1:
        for key in ("rss_after_scan_mib", "peak_rss_mib", "peak_worker_rss_mib"):
            growth = rows[-1][key] / rows[0][key] - 1
            print(f"{key}, {rows[-1]['files']:,} files against {rows[0]['files']:,}: {100 * growth:+.1f} %")
    out_file = ROOT / "bench" / "results" / f"stream_speed-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_file.write_text(json.dumps(rows, indent=2))
    print(f"written: {out_file}")


if __name__ == "__main__":
    main()
