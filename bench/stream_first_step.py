"""How long a streamed ImageNet-layout folder takes to reach its first optimizer step, through run.py.

    python bench/stream_first_step.py                   # 1000 classes x 1,281 training + 50 validation files
    python bench/stream_first_step.py --per-class 128   # a tenth of ImageNet

The folder has ImageNet's layout and file count (1,281,000 training files in 1,000 class folders, 50,000 in val/),
every file a hard link to one of 100 generated JPEGs of ImageNet's mean size (bench/stream_speed.py's), so that
it costs directory entries, not 140 GB. It is made once into ``--root`` and kept.

Then ``run.py data=imagenet`` trains ViT-T/16 (random weights: ``model=vit-tiny-scratch``) on it, with the dense
test accuracy measured on ``--test-images`` images before training as every run does, and a checkpoint after every
step (``train.checkpoint_every_min=0``): the first checkpoint's time is the first step's. The phases come from
run.log's timestamps: start to the data's log line (scanning 1.33 M files, carving the validation split), to the
dense test accuracy (ViT-T forward passes: the CPU's part, a GPU's is seconds), to the first step
(the first batch decoded by the workers, one forward and backward pass). Results go to bench/results/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream_speed import generate

ROOT = Path(__file__).resolve().parents[1]


def layout(root: Path, per_class: int, classes: int = 1000, val_per_class: int = 50) -> Path:
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG as hard links to a pool of 100 real JPEGs."""
    folder = root / f"imagenet-layout-{classes}x{per_class}"
    done = folder / ".complete"
    if done.exists():
        return folder
    pool = root / "pool"
    generate(pool, 100)
    jpegs = sorted(str(p) for p in (pool / "train").rglob("*.JPEG"))
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            wnid = folder / split / f"n{c:08d}"
            wnid.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                target = wnid / f"n{c:08d}_{i}.JPEG"
                if not target.exists():
                    os.link(jpegs[(c * 7 + i) % len(jpegs)], target)
        print(f"  {split}/: {classes * count:,} files", flush=True)
    done.touch()
    return folder


def stamp(line: str) -> float:
    return datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_step(folder: Path, val_images: int, test_images: int, workers: int, batch: int) -> dict:
    """run.py on ``folder`` until its first checkpoint; the seconds from launch to each phase."""
    out = Path(tempfile.mkdtemp(prefix="vcon-first-step-"))
    command = [sys.executable, "run.py", "model=vit-tiny-scratch", "data=imagenet", f"data.path={folder}",
               f"data.workers={workers}", f"data.val_size={val_images}", f"data.test_size={test_images}",
               f"train.batch_size={batch}",
               "train.checkpoint_every_min=0", "tracking.wandb.mode=disabled", f"outputs={out}"]
    started = time.time()
    with open(out / "output.txt", "w") as output:
        run = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        try:
            while not list(out.glob("runs/*/checkpoint.pt")) and run.poll() is None:
                time.sleep(0.05)
            stepped = time.time()
        finally:
            run.kill()
            run.wait()
    if not list(out.glob("runs/*/checkpoint.pt")):
        sys.exit(f"run.py stopped before its first step:\n{(out / 'output.txt').read_text()[-3000:]}")
    (log_file,) = out.glob("runs/*/run.log")
    log = log_file.read_text().splitlines()

    def at(pattern: str) -> float:
        return next(stamp(line) for line in log if re.search(pattern, line)) - started

    data_line = next(line for line in log if "] - data imagenet:" in line)
    return {"files": data_line.split("] - ")[1], "val_images": val_images, "test_images": test_images,
            "workers": workers, "batch": batch,
            "data_s": at(r"\] - data imagenet:"), "dense_test_s": at(r"\] - dense test"),
            "first_step_s": stepped - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=1281, help="training files per class (ImageNet: ~1,281)")
    parser.add_argument("--test-images", type=int, default=256, help="test images of the dense accuracy")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--root", default="/tmp/vcon-stream-bench")
    args = parser.parse_args()
    started = time.perf_counter()
    folder = layout(Path(args.root), args.per_class)
    print(f"{folder} ready ({time.perf_counter() - started:.0f} s)", flush=True)
    val_images = min(10_000, 100 * args.per_class)  # ImageNet's 10,000 held out of 1.28 M; a tenth of smaller ones
    row = first_step(folder, val_images, args.test_images, args.workers, args.batch)
    print(f"{row['files']}\n"
          f"  data loaded (scan, splits) {row['data_s']:6.1f} s after launch\n"
          f"  dense test accuracy        {row['dense_test_s']:6.1f} s ({row['test_images']} images)\n"
          f"  first step done            {row['first_step_s']:6.1f} s (batch {row['batch']}, "
          f"{row['workers']} workers)")
    out_file = ROOT / "bench" / "results" / f"stream_first_step-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_file.write_text(json.dumps(row, indent=2))
    print(f"written: {out_file}")


if __name__ == "__main__":
    main()
