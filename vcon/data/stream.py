"""Images streamed from disk (``data=imagenet``, and ``data=imagefolder`` when it would not fit in memory): only the
list of images is held (file names, or row numbers of a Hugging Face dataset, whose Arrow files are memory-mapped);
DataLoader worker processes read, decode and crop each batch while the device trains on the last, and the existing
device pipeline (RandAugment, MixUp, normalisation) does the rest.

The crops are the usual ViT fine-tuning transforms: a random resized crop (scale 0.08–1, aspect 3/4–4/3, as
torchvision's) and a horizontal flip for training, the central 87.5 % resized for evaluation (ImageNet's 256 → 224).
Each example's randomness is drawn from a generator seeded by the epoch and the example's index, so a resumed epoch
reads exactly the crops an uninterrupted one would, whichever worker decodes them.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from vcon import hub
from vcon.data.base import HUB_ID, StreamedImages, held_out, loader
from vcon.errors import ConfigError, require
from vcon.schema import optional, setting, text

log = logging.getLogger(__name__)
SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}
EVAL_CROP = 0.875  # the central 87.5 % of the shorter side: resize to 256, crop 224


@functools.cache
def _listing(folder: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """The class folders under ``folder`` (sorted), their image files as one array of UTF-8 ``class/file`` names
    (sorted within each class), and each class's count. os.scandir lists ImageNet's 1.28 M files in 2-3 s, where
    pathlib's objects take several times longer; a class at a time, so only one class's names are ever Python
    strings. Cached: ``data.stream=auto`` counts what the loader then reads."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    names = [np.array([f"{c}/{e.name}".encode() for e in sorted(os.scandir(folder / c), key=lambda e: e.name)
                       if os.path.splitext(e.name)[1].lower() in SUFFIXES], dtype=bytes) for c in classes]
    return tuple(classes), np.concatenate(names or [np.array([], dtype=bytes)]), np.array([len(n) for n in names])


def scan(folder: Path, classes: list[str] | None = None) -> tuple["Files", torch.Tensor, list[str]]:
    """The image files under ``folder/<class>/``, their labels, and the classes (sorted folder names, or the given
    ones, which the folder must have exactly)."""
    found, names, counts = _listing(folder)
    found = list(found)
    if classes is not None and found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise ConfigError(f"{folder} does not have the training split's classes: missing {missing[:5]}, extra "
                          f"{extra[:5]}; allowed: the same class folders as train/")
    if not len(names):
        raise ConfigError(f"{folder} holds no images (*{', *'.join(sorted(SUFFIXES))}) in class folders")
    labels = torch.repeat_interleave(torch.arange(len(found)), torch.from_numpy(counts))
    return Files(str(folder), names), labels, found


@dataclasses.dataclass(frozen=True)
class Files:
    """Image files under ``root``. Their names are one NumPy byte array, not a list of strings: DataLoader workers
    are forked, and a list of 1.28 M Python strings would be copied into each as their reference counts change."""

    root: str
    names: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: np.ndarray) -> "Files":
        return Files(self.root, self.names[index])

    def name(self, i: int) -> str:
        return os.path.join(self.root, self.names[i].decode())  # UTF-8, as _listing encoded it

    def open(self, i: int) -> Image.Image:
        return Image.open(self.name(i))


@dataclasses.dataclass(frozen=True)
class Rows:
    """Rows of a Hugging Face dataset split (its Arrow files memory-mapped, not read into memory), by number."""

    table: Any  # datasets.Dataset
    image_key: str
    rows: np.ndarray  # the split's row numbers in this subset

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: np.ndarray) -> "Rows":
        return dataclasses.replace(self, rows=self.rows[index])

    def name(self, i: int) -> str:
        return f"row {self.rows[i]} of {self.table.info.dataset_name or 'the dataset'}'s {self.table.split} split"

    def open(self, i: int) -> Image.Image:
        return self.table[int(self.rows[i])][self.image_key]


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


def crop(image: Image.Image, size: int, rng: random.Random | None) -> torch.Tensor:
    """An image as uint8 3 x size x size: a random resized crop and flip with ``rng``, the central crop without."""
    with image:
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


class _Reader(torch.utils.data.Dataset):
    """What a worker reads: example ``i`` of ``source`` decoded, with the randomness that ``salt`` and ``i`` seed. An
    unreadable image stops the run, naming it, or (``skip``) is replaced by the next readable one, with a warning
    naming it."""

    def __init__(self, source: Files | Rows, size: int, augment: bool, salt: int, skip: bool = False) -> None:
        self.source, self.size, self.augment, self.salt, self.skip = source, size, augment, salt, skip

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for tried in range(len(self.source)):
            i = (index + tried) % len(self.source)
            rng = random.Random(self.salt * 1_000_003 + i) if self.augment else None
            try:
                return crop(self.source.open(i), self.size, rng), i
            except OSError as error:  # truncated, not an image, unreadable
                if not self.skip:
                    raise OSError(f"cannot read image {self.source.name(i)} ({error}); data.bad_images=skip reads "
                                  "the next image in its place") from error
                log.warning("cannot read image %s (%s): the next image is read in its place", self.source.name(i),
                            error)
        raise OSError(f"no image of {len(self.source)} can be read")


@dataclasses.dataclass
class StreamedSplit:
    """A split streamed from image files or dataset rows: the ``Split`` interface of ``vcon.data`` without the images
    in memory."""

    source: Files | Rows
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

    def subset(self, index: torch.Tensor) -> "StreamedSplit":
        return dataclasses.replace(self, source=self.source.subset(index.cpu().numpy()), labels=self.labels[index])

    def to(self, device: torch.device) -> "StreamedSplit":
        return self  # the labels stay with the file list; batches go to the device as they come

    def for_evaluation(self) -> "StreamedSplit":
        return dataclasses.replace(self, augment=False)

    def order(self, permutation: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return permutation

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        index = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        reader = _Reader(self.source, self.size, False, 0, self.skip_bad)
        return torch.stack([reader[i][0] for i in index])

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0, world: Any = None, salt: int = 0,
                last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, size = (world.rank, world.size) if world is not None else (0, 1)
        end = len(order) if last else len(order) - batch_size + 1
        shares = [order[f:f + batch_size][rank::size].tolist() for f in range(start * batch_size, end, batch_size)]
        loader = torch.utils.data.DataLoader(
            _Reader(self.source, self.size, self.augment, salt, self.skip_bad), batch_sampler=shares,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(), prefetch_factor=4 if self.workers else None)
        for images, index in loader:  # the indices read (a skipped image's successor): their labels
            yield images, self.labels[index]


STREAM_ABOVE = 4 * 2**30  # data.stream=auto streams a folder whose images would take more memory than this


def streams(cfg: Any) -> bool:
    """``data.stream``: true, false, or auto (stream when the training images, as uint8 at ``image_size``, would
    exceed 4 GiB)."""
    setting = cfg.get("stream", False)
    if setting != "auto":
        return bool(setting)
    _, names, _ = _listing(Path(str(cfg.path)).expanduser() / "train")
    return len(names) * 3 * cfg.image_size ** 2 > STREAM_ABOVE


def _workers(cfg: Any) -> int:
    """``data.workers``, with a warning where they would compete with training for this process's cores (SLURM's
    cpus_per_task, else the cores this process may run on)."""
    cores = int(os.environ.get("SLURM_CPUS_PER_TASK") or len(os.sched_getaffinity(0)))
    if cfg.workers >= cores:
        log.warning("data.workers=%d decode on the %d cores this process has, beside training: give each process "
                    "about data.workers + 2 cores (hydra.launcher.cpus_per_task)", cfg.workers, cores)
    return cfg.workers


def _skip_bad(cfg: Any) -> bool:
    return cfg.bad_images == "skip"


def folder(cfg: Any, test_folders: tuple[str, ...] = ("test", "val")) -> tuple[StreamedSplit, StreamedSplit]:
    """``<path>/train/<class>/*`` streamed, and the first of ``test_folders`` there as the test split (the same
    classes); without one, a fixed test split held out of training as for in-memory folders."""
    root, skip = Path(str(cfg.path)).expanduser(), _skip_bad(cfg)
    files, labels, classes = scan(root / "train")
    train = StreamedSplit(files, labels, cfg.image_size, _workers(cfg), skip_bad=skip)
    held = next((root / name for name in test_folders if (root / name).is_dir()), None)
    if held is None:
        kept, test = held_out(len(train), cfg)
        return train.subset(kept), train.subset(test).for_evaluation()
    test_files, test_labels, _ = scan(held, classes)
    return train, StreamedSplit(test_files, test_labels, cfg.image_size, train.workers, augment=False, skip_bad=skip)


def rows(cfg: Any) -> tuple[StreamedSplit, StreamedSplit]:
    """``data.hub_id``'s train split streamed from its Arrow files, and its ``data.test_split`` as the test split:
    from the hub (``datasets`` downloads and converts it once, into its cache), or from a local copy of the
    dataset's files (a folder of its parquet shards)."""
    skip, workers, tables = _skip_bad(cfg), _workers(cfg), hub.load_dataset(cfg.hub_id)
    require(cfg.test_split in tables, "data.test_split", cfg.test_split, f"one of {sorted(tables)}")

    def split(name: str, augment: bool) -> StreamedSplit:
        table = tables[name]
        labels = torch.from_numpy(table.data.column(cfg.label_key).to_numpy().astype(np.int64))
        if len(labels) and labels.min() < 0:
            raise ConfigError(f"{cfg.hub_id}'s {name} split is unlabelled (label -1); data.test_split must name a "
                              f"labelled split of {sorted(tables)}")
        source = Rows(table, cfg.image_key, np.arange(len(table)))
        return StreamedSplit(source, labels, cfg.image_size, workers, augment=augment, skip_bad=skip)

    return split("train", True), split(cfg.test_split, False)


@dataclasses.dataclass
class ImageNet(StreamedImages):
    path: str | None = setting(optional(text("a folder holding train/<wnid>/ and val/<wnid>/"), "the hub's"))
    hub_id: str = setting(HUB_ID)
    test_split: str = setting(text("a split of data.hub_id"))


def _check_imagenet(cfg: Any) -> None:
    if cfg.path is None:
        return  # the hub's (or a local copy of it): data.hub_id
    root = Path(str(cfg.path)).expanduser()
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        raise ConfigError(f"data.path={str(cfg.path)!r} is not allowed: expected ImageNet's layout, "
                          f"train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, under it (or data.path=null: the hub's "
                          f"data.hub_id={cfg.hub_id})")


@loader("imagenet", check=_check_imagenet, needs_hub=lambda cfg: cfg.path is None and not hub.is_local(cfg.hub_id),
        schema=ImageNet)
def _imagenet(cfg: Any, model_cfg: Any = None) -> tuple[StreamedSplit, StreamedSplit]:
    """ImageNet-1k, always streamed, from a local folder or the hub; its official validation set is the test
    split."""
    return folder(cfg, ("val",)) if cfg.path is not None else rows(cfg)
