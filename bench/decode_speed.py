"""Decoding JPEGs for streamed training: on CPU cores (what vcon does: Pillow in DataLoader workers) against the
GPU's nvJPEG (torchvision.io.decode_jpeg on CUDA), to say whether decoding on the GPU would be faster.

    python bench/decode_speed.py                   # CPU parts only where there is no GPU
    bash bench/gpu_checks.sh decode                # on a GPU machine

Measured on ``--images`` generated JPEGs of ImageNet's mean size (bench/stream_speed.py's generator), in batches
of 128, to random resized 224 px crops:
  * one core: vcon.data.stream.crop (Pillow decode, crop, resize, flip), images/s;
  * the streamed path with ``--workers`` DataLoader workers (vcon/data/stream.py as a run uses it), images/s;
  * with CUDA and torchvision: nvJPEG batch decoding alone, and decoding with the crops made on the GPU.
Results go to bench/results/.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import time
from pathlib import Path

import torch
from stream_speed import generate, measure

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128


def rate(fn, images: int) -> float:
    started = time.perf_counter()
    fn()
    return images / (time.perf_counter() - started)


def cpu_rates(files: list[Path], folder: Path, workers: int) -> dict:
    from PIL import Image

    from vcon.data import stream

    blobs = [f.read_bytes() for f in files]
    rng = random.Random(0)
    one_core = rate(lambda: [stream.crop(Image.open(io.BytesIO(b)), 224, rng) for b in blobs], len(blobs))
    streamed = measure(str(folder), len(files), workers, BATCH)["streamed_images_per_s"]  # as a run streams them
    return {"one_core_images_per_s": one_core, "workers": workers, "streamed_images_per_s": streamed}


def gpu_rates(files: list[Path]) -> dict:
    import torch.nn.functional as F
    import torchvision
    from torchvision.io import decode_jpeg

    data = [torchvision.io.read_file(str(f)) for f in files]
    batches = [data[i:i + BATCH] for i in range(0, len(data) - BATCH + 1, BATCH)]
    decode_jpeg(batches[0], device="cuda")  # nvJPEG's handles, once
    torch.cuda.synchronize()

    def decode_only():
        for batch in batches:
            decode_jpeg(batch, device="cuda")
        torch.cuda.synchronize()

    def decode_and_crop():
        rng = random.Random(0)
        for batch in batches:
            crops = []
            for image in decode_jpeg(batch, device="cuda"):
                _, h, w = image.shape
                side_h, side_w = rng.randint(h // 3, h), rng.randint(w // 3, w)
                y, x = rng.randint(0, h - side_h), rng.randint(0, w - side_w)
                crops.append(F.interpolate(image[None, :, y:y + side_h, x:x + side_w].float(), size=(224, 224),
                                           mode="bilinear", antialias=True))
            torch.cat(crops)
        torch.cuda.synchronize()

    images = len(batches) * BATCH
    return {"gpu": torch.cuda.get_device_name(), "torchvision": torchvision.__version__,
            "nvjpeg_decode_images_per_s": rate(decode_only, images),
            "nvjpeg_decode_and_crop_images_per_s": rate(decode_and_crop, images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--root", default="/tmp/vcon-stream-bench")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    folder = Path(args.root) / f"jpeg-{args.images}"
    generate(folder, args.images)
    files = sorted((folder / "train").rglob("*.JPEG"))
    row = {"images": len(files), "cores": os.cpu_count(), **cpu_rates(files, folder, args.workers)}
    print(f"CPU: {row['one_core_images_per_s']:.0f} images/s on one core; streamed with {row['workers']} workers "
          f"{row['streamed_images_per_s']:.0f} images/s", flush=True)
    if torch.cuda.is_available():
        row |= gpu_rates(files)
        print(f"{row['gpu']}: nvJPEG decoding {row['nvjpeg_decode_images_per_s']:.0f} images/s, with the crops "
              f"on the GPU {row['nvjpeg_decode_and_crop_images_per_s']:.0f} images/s")
    else:
        print("no CUDA device: the GPU's decoding is not measured")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out_file = Path(args.out) / f"decode_speed-{device}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_file.write_text(json.dumps(row, indent=2))
    print(f"written: {out_file}")


if __name__ == "__main__":
    main()
