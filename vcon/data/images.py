"""The in-memory image datasets: Fashion-MNIST from its IDX files (Debian's ``dataset-fashion-mnist``) or the hub,
CIFAR from the hub, and a local folder of images (streamed from disk when it is large: ``vcon/data/stream.py``)."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcon import hub
from vcon.data import stream
from vcon.data.base import FashionMnist, HubImages, ImageFolder, Split, held_out, loader
from vcon.errors import ConfigError

log = logging.getLogger(__name__)

def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): magic with the number of dimensions, big-endian sizes, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist_missing(cfg: Any) -> bool:
    return not (Path(cfg.root) / "train-images-idx3-ubyte.gz").exists()


def _check_imagefolder(cfg: Any) -> None:
    path = Path(str(cfg.path)).expanduser()
    if not (path / "train").is_dir():
        raise ConfigError(f"data.path={str(cfg.path)!r} is not allowed: expected a folder holding train/<class>/"
                          f"*.png|jpg (and optionally test/<class>/...); {path / 'train'} does not exist")


@loader("fashion-mnist", needs_hub=_fashion_mnist_missing, schema=FashionMnist)
def _fashion_mnist(cfg: Any, model_cfg: Any = None) -> tuple[Split, Split]:
    root = Path(cfg.root)
    if not _fashion_mnist_missing(cfg):
        def split(prefix: str) -> Split:
            images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
            labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
            return Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
        return split("train"), split("t10k")
    log.info("%s has no Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist); using the hub", root)
    return _from_hub(cfg)


@loader("cifar10", schema=HubImages)
@loader("cifar100", schema=HubImages)
def _from_hub(cfg: Any, model_cfg: Any = None) -> tuple[Split, Split]:
    ds = hub.load_dataset(cfg.hub_id)
    return _to_split(ds["train"], cfg), _to_split(ds["test"], cfg)


@loader("imagefolder", check=_check_imagefolder, needs_hub=lambda cfg: False, schema=ImageFolder)
def _imagefolder(cfg: Any, model_cfg: Any = None) -> tuple[Split, Split]:
    if stream.streams(cfg):
        return stream.folder(cfg)  # Pillow in worker processes: no `datasets` needed

    import datasets  # a local folder never touches the hub

    ds = datasets.load_dataset("imagefolder", data_dir=str(Path(str(cfg.path)).expanduser()))
    train = _to_split(ds["train"], cfg)
    if "test" in ds:
        return train, _to_split(ds["test"], cfg)
    kept, held = held_out(len(train), cfg)
    return train.subset(kept), train.subset(held)


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
