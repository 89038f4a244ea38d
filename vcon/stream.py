"""Images streamed from disk (``data=imagenet``, and ``data=imagefolder`` when it would not fit in memory): only the
file list is held; DataLoader worker processes read, decode and crop each batch while the device trains on the last,
and the existing device pipeline (RandAugment, MixUp, normalisation) does the rest.

The crops are the usual ViT fine-tuning transforms: a random resized crop (scale 0.08–1, aspect 3/4–4/3, as
torchvision's) and a horizontal flip for training, the central 87.5 % resized for evaluation (ImageNet's 256 → 224).
Each example's randomness is drawn from a generator seeded by the epoch and the example's index, so a resumed epoch
reads exactly the crops an uninterrupted one would, whichever worker decodes them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from vcon.data import held_out, loader
from vcon.errors import ConfigError, require

log = logging.getLogger(__name__)
SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}
EVAL_CROP = 0.875  # the central 87.5 % of the shorter side: resize to 256, crop 224


def scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], torch.Tensor, list[str]]:
    """The image files under ``folder/<class>/``, sorted, their labels, and the classes (sorted folder names, or the
    given ones, which the folder must have exactly)."""
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes is not None and found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise ConfigError(f"{folder} does not have the training split's classes: missing {missing[:5]}, extra "
                          f"{extra[:5]}; allowed: the same class folders as train/")
    paths, labels = [], []
    for label, name in enumerate(found):
        files = sorted(str(p) for p in (folder / name).iterdir() if p.suffix.lower() in SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ConfigError(f"{folder} holds no images (*{', *'.join(sorted(SUFFIXES))}) in class folders")
    return paths, torch.tensor(labels, dtype=torch.int64), found


def _random_resized_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: 10 tries at a random area and aspect, else the central crop."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            return x, y, x + w, y + h
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2


def read(path: str, size: int, rng: random.Random | None) -> torch.Tensor:
    """One image as uint8 3 x size x size: a random resized crop and flip with ``rng``, the central crop without."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        if rng is None:
            side = min(width, height) * EVAL_CROP
            box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        else:
            box = _random_resized_box(width, height, rng)
        out = image.resize((size, size), Image.BILINEAR, box=box)
        if rng is not None and rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


class _Files(torch.utils.data.Dataset):
    """What a worker reads: example ``i`` decoded, with the randomness that ``salt`` and ``i`` seed. An unreadable
    file stops the run, naming it, or (``skip``) is replaced by the next readable one, with a warning naming it."""

    def __init__(self, paths: list[str], size: int, augment: bool, salt: int, skip: bool = False) -> None:
        self.paths, self.size, self.augment, self.salt, self.skip = paths, size, augment, salt, skip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for tried in range(len(self.paths)):
            i = (index + tried) % len(self.paths)
            rng = random.Random(self.salt * 1_000_003 + i) if self.augment else None
            try:
                return read(self.paths[i], self.size, rng), i
            except OSError as error:  # truncated, not an image, unreadable
                if not self.skip:
                    raise OSError(f"cannot read image {self.paths[i]} ({error}); data.bad_images=skip reads the "
                                  "next image in its place") from error
                log.warning("cannot read image %s (%s): the next image is read in its place", self.paths[i], error)
        raise OSError(f"no image of {len(self.paths)} can be read")


@dataclasses.dataclass
class FolderSplit:
    """A split streamed from image files: the ``Split`` interface of ``vcon.data`` without the images in memory."""

    paths: list[str]
    labels: torch.Tensor
    size: int  # the side of the crops, the model's input size
    workers: int
    augment: bool = True  # random crops (training); False: central crops (validation, test)
    skip_bad: bool = False  # data.bad_images=skip
    streamed = True

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return 3, self.size, self.size

    def subset(self, index: torch.Tensor) -> "FolderSplit":
        return dataclasses.replace(self, paths=[self.paths[i] for i in index.tolist()], labels=self.labels[index])

    def to(self, device: torch.device) -> "FolderSplit":
        return self  # the labels stay with the file list; batches go to the device as they come

    def for_evaluation(self) -> "FolderSplit":
        return dataclasses.replace(self, augment=False)

    def order(self, permutation: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return permutation

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        index = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        files = _Files(self.paths, self.size, False, 0, self.skip_bad)
        return torch.stack([files[i][0] for i in index])

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0, world: Any = None, salt: int = 0,
                last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, size = (world.rank, world.size) if world is not None else (0, 1)
        end = len(order) if last else len(order) - batch_size + 1
        shares = [order[f:f + batch_size][rank::size].tolist() for f in range(start * batch_size, end, batch_size)]
        loader = torch.utils.data.DataLoader(
            _Files(self.paths, self.size, self.augment, salt, self.skip_bad), batch_sampler=shares,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(), prefetch_factor=4 if self.workers else None)
        for images, index in loader:  # the indices read (a skipped image's successor): their labels
            yield images, self.labels[index]


BAD_IMAGES = ("stop", "skip")
STREAM_ABOVE = 4 * 2**30  # data.stream=auto streams a folder whose images would take more memory than this


def _train_files(cfg: Any) -> list[Path]:
    return [p for p in (Path(str(cfg.path)).expanduser() / "train").rglob("*") if p.suffix.lower() in SUFFIXES]


def streams(cfg: Any) -> bool:
    """``data.stream``: true, false, or auto (stream when the training images, as uint8 at ``image_size``, would
    exceed 4 GiB)."""
    setting = cfg.get("stream", False)
    if setting != "auto":
        return bool(setting)
    return len(_train_files(cfg)) * 3 * cfg.image_size ** 2 > STREAM_ABOVE


def folder(cfg: Any, test_folders: tuple[str, ...] = ("test", "val")) -> tuple[FolderSplit, FolderSplit]:
    """``<path>/train/<class>/*`` streamed, and the first of ``test_folders`` there as the test split (the same
    classes); without one, a fixed test split held out of training as for in-memory folders."""
    root = Path(str(cfg.path)).expanduser()
    require(cfg.bad_images in BAD_IMAGES, "data.bad_images", cfg.bad_images, f"one of {BAD_IMAGES}")
    skip = cfg.bad_images == "skip"
    paths, labels, classes = scan(root / "train")
    train = FolderSplit(paths, labels, cfg.image_size, cfg.workers, skip_bad=skip)
    held = next((root / name for name in test_folders if (root / name).is_dir()), None)
    if held is None:
        kept, test = held_out(len(train), cfg)
        return train.subset(kept), train.subset(test).for_evaluation()
    test_paths, test_labels, _ = scan(held, classes)
    return train, FolderSplit(test_paths, test_labels, cfg.image_size, cfg.workers, augment=False, skip_bad=skip)


def _check_imagenet(cfg: Any) -> None:
    root = Path(str(cfg.path)).expanduser()
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        raise ConfigError(f"data.path={str(cfg.path)!r} is not allowed: expected ImageNet's layout, "
                          f"train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, under it")


@loader("imagenet", check=_check_imagenet, needs_hub=lambda cfg: False)
def _imagenet(cfg: Any, model_cfg: Any = None) -> tuple[FolderSplit, FolderSplit]:
    """ImageNet-1k from a local folder, always streamed; its official validation set is the test split."""
    return folder(cfg, ("val",))
