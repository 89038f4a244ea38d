"""Datasets as in-memory uint8 tensors with fixed validation and test splits (the ``data`` config group).

Whole datasets of this size (Fashion-MNIST 47 MB, CIFAR 150 MB) fit in memory as uint8, so batches are gathered by
index and augmented on the training device; no DataLoader workers, and the data order is a seeded permutation per
epoch that a resumed run can replay exactly.
"""
from __future__ import annotations

import dataclasses
import gzip
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vcon import hub
from vcon.errors import ConfigError, require

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclasses.dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    num_classes: int

    def to(self, device: torch.device) -> "Dataset":
        """The whole dataset on ``device`` (uint8: CIFAR-10 takes 184 MB of a GPU's memory); CPU runs keep it."""
        if device.type == "cpu":
            return self
        return Dataset(self.train.to(device), self.val.to(device), self.test.to(device), self.num_classes)


LOADERS: dict[str, Callable[[Any], tuple[Split, Split]]] = {}


def loader(name: str):
    def add(fn):
        LOADERS[name] = fn
        return fn
    return add


def check(cfg: Any) -> None:
    """Cheap checks of the ``data`` config, before anything is loaded."""
    require(cfg.name in LOADERS, "data.name", cfg.name, f"one of {sorted(LOADERS)}")
    require(isinstance(cfg.val_size, int) and cfg.val_size > 0, "data.val_size", cfg.val_size, "an integer > 0")
    for key in ("train_size", "test_size"):
        size = cfg.get(key)
        require(size is None or (isinstance(size, int) and size > 0), f"data.{key}", size,
                "null (all) or an integer > 0")
    if cfg.name == "imagefolder":
        path = Path(str(cfg.path)).expanduser()
        if not (path / "train").is_dir():
            raise ConfigError(f"data.path={str(cfg.path)!r} is not allowed: expected a folder holding train/<class>/"
                              f"*.png|jpg (and optionally test/<class>/...); {path / 'train'} does not exist")


def needs_hub(cfg: Any) -> bool:
    if cfg.name == "fashion-mnist":
        return not (Path(cfg.root) / "train-images-idx3-ubyte.gz").exists()
    return cfg.name != "imagefolder"


def load(cfg: Any) -> Dataset:
    """Load ``cfg.name`` and carve a fixed validation split (``val_size`` images, chosen by ``split_seed``, not by
    the run's seed, so every run of a sweep validates on the same images) from its training split."""
    check(cfg)
    train, test = LOADERS[cfg.name](cfg)
    require(cfg.val_size < len(train), "data.val_size", cfg.val_size, f"fewer than the {len(train)} training images")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.split_seed))
    val, train = train.subset(order[: cfg.val_size]), train.subset(order[cfg.val_size:])
    if cfg.get("train_size") is not None:
        train = train.subset(torch.arange(min(cfg.train_size, len(train))))
    if cfg.get("test_size") is not None:  # quick runs: the first images of the fixed test split
        test = test.subset(torch.arange(min(cfg.test_size, len(test))))
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    log.info("data %s: %d train, %d val, %d test images of %s, %d classes", cfg.name, len(train), len(val),
             len(test), tuple(train.images.shape[1:]), num_classes)
    return Dataset(train, val, test, num_classes)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): magic with the number of dimensions, big-endian sizes, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@loader("fashion-mnist")
def _fashion_mnist(cfg: Any) -> tuple[Split, Split]:
    root = Path(cfg.root)
    if not needs_hub(cfg):
        def split(prefix: str) -> Split:
            images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
            labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
            return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
        return split("train"), split("t10k")
    log.info("%s has no Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist); using the hub", root)
    return _from_hub(cfg)


@loader("cifar10")
@loader("cifar100")
def _from_hub(cfg: Any) -> tuple[Split, Split]:
    ds = hub.load_dataset(cfg.hub_id)
    return _to_split(ds["train"], cfg), _to_split(ds["test"], cfg)


@loader("imagefolder")
def _imagefolder(cfg: Any) -> tuple[Split, Split]:
    import datasets  # a local folder never touches the hub

    ds = datasets.load_dataset("imagefolder", data_dir=str(Path(str(cfg.path)).expanduser()))
    train = _to_split(ds["train"], cfg)
    if "test" in ds:
        return train, _to_split(ds["test"], cfg)
    # No test folder: hold out a fixed test split as well (the same way the validation split is chosen).
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.split_seed + 1))
    return train.subset(order[cfg.val_size:]), train.subset(order[: cfg.val_size])


def _to_split(ds: Any, cfg: Any) -> Split:
    """A Hugging Face image dataset as uint8 tensors, images brought to ``cfg.image_size`` if set (they must share
    one size to be stacked)."""
    image_key, label_key = cfg.image_key, cfg.label_key
    size = cfg.get("image_size")
    images, labels = [], []
    for row in ds:
        image = row[image_key]
        if size is not None and image.size != (size, size):
            image = image.resize((size, size))
        array = np.asarray(image.convert("L" if image.mode in ("L", "1", "I") else "RGB"))
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        labels.append(row[label_key])
    return Split(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64))
