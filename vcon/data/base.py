"""Datasets as in-memory tensors with fixed validation and test splits (the ``data`` config group): images as uint8
here, texts as token ids (``vcon/data/text.py``).

Whole datasets of this size (Fashion-MNIST 47 MB, CIFAR 150 MB, MNLI's 393k pairs as 128 int32 ids: 200 MB) fit in
memory, so batches are gathered by index and prepared on the training device; no DataLoader workers, and the data
order is a seeded permutation per epoch that a resumed run can replay exactly.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterator

import torch

from vcon.errors import require
from vcon.schema import check_settings, integer, one_of, optional, registered, setting, text

log = logging.getLogger(__name__)
KEY = text("a column of the dataset")
HUB_ID = text("a dataset on the Hugging Face Hub, or a local copy of its files")
BAD_IMAGES = ("stop", "skip")


@dataclasses.dataclass
class DataConfig:
    """The keys of every ``data`` option (``name``, which chooses the loader, aside); each loader's schema adds its
    own (``Loader.schema``)."""

    val_size: int = setting(integer(1, means="training examples held out for validation"))
    split_seed: int = setting(integer(0))
    train_size: int | None = setting(optional(integer(1), "all"), None)
    test_size: int | None = setting(optional(integer(1), "all"), None)


@dataclasses.dataclass
class Images(DataConfig):
    image_key: str = setting(KEY)
    label_key: str = setting(KEY)


@dataclasses.dataclass
class HubImages(Images):
    hub_id: str = setting(HUB_ID)


@dataclasses.dataclass
class FashionMnist(HubImages):
    root: str = setting(text("a folder of Fashion-MNIST's IDX files"))


@dataclasses.dataclass
class StreamedImages(Images):
    """Images that may be streamed from disk (vcon/data/stream.py): crops of ``image_size``, read by ``workers``."""

    image_size: int = setting(integer(1, means="pixels"))
    workers: int = setting(integer(0, means="0: decode in the training process"))
    bad_images: str = setting(one_of(*BAD_IMAGES))


@dataclasses.dataclass
class ImageFolder(StreamedImages):
    path: str = setting(text("a folder holding train/<class>/*.png|jpg"))
    stream: Any = setting(one_of("auto", True, False), False)  # a string such as 'no' would be true


@dataclasses.dataclass
class Split:
    inputs: torch.Tensor  # images: uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    streamed = False  # held in memory (vcon/data/stream.py streams from disk)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return dataclasses.replace(self, inputs=self.inputs[index], labels=self.labels[index])

    def to(self, device: torch.device) -> "Split":
        return dataclasses.replace(self, inputs=self.inputs.to(device), labels=self.labels.to(device))

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The inputs of the examples at ``index``."""
        return self.inputs[index]

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    def for_evaluation(self) -> "Split":
        """The split as validation and test read it (a streamed one: central crops, not random ones)."""
        return self

    def order(self, permutation: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """An epoch's order of examples, given its seeded permutation (texts group lengths here)."""
        return permutation

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0, world: Any = None, salt: int = 0,
                last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels) of the whole batches of ``order`` from batch ``start`` on (``last``: and the partial
        one at the end); with several processes, this process's share of each. ``salt`` seeds per-example
        randomness where a source has any (a streamed one's crops, ``vcon/data/stream.py``), so that a resumed epoch
        reads exactly what an uninterrupted one would."""
        rank, size = (world.rank, world.size) if world is not None else (0, 1)
        end = len(order) if last else len(order) - batch_size + 1
        for first in range(start * batch_size, end, batch_size):
            index = order[first:first + batch_size][rank::size]
            yield self.batch(index), self.labels[index]


@dataclasses.dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    num_classes: int
    metric: str = "accuracy"  # the headline metric (vcon/train/metrics.py)

    def to(self, device: torch.device) -> "Dataset":
        """The whole dataset on ``device`` (uint8: CIFAR-10 takes 184 MB of a GPU's memory); CPU runs keep it."""
        if device.type == "cpu":
            return self
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device),
                                   test=self.test.to(device))


@dataclasses.dataclass
class Loader:
    """A ``data.name``: what it gives (``inputs``: ``image`` or ``text``, which the model must take) and how it is
    read: ``read(data_cfg, model_cfg) -> (train, test)`` (texts are tokenised by the model's tokenizer)."""

    read: Callable[[Any, Any], tuple[Split, Split]]
    inputs: str = "image"
    metric: Callable[[Any], str] = lambda cfg: "accuracy"
    check: Callable[[Any], None] = lambda cfg: None
    needs_hub: Callable[[Any], bool] = lambda cfg: True
    schema: type = DataConfig  # its keys (vcon/schema.py)


LOADERS: dict[str, Loader] = {}


def loader(name: str, **kwargs: Any):
    def add(fn):
        LOADERS[name] = Loader(fn, **kwargs)
        return fn
    return add


def check(cfg: Any) -> None:
    """Cheap checks of the ``data`` config, before anything is loaded: its settings against its loader's schema, then
    the loader's own checks (its files are there)."""
    loader = registered(LOADERS, "data.name", cfg.name)
    check_settings(cfg, loader.schema, "data")
    loader.check(cfg)


def inputs(cfg: Any) -> str:
    """What the dataset gives: ``image`` or ``text``."""
    return LOADERS[cfg.name].inputs


def needs_hub(cfg: Any) -> bool:
    return LOADERS[cfg.name].needs_hub(cfg)


def load(cfg: Any, model_cfg: Any = None) -> Dataset:
    """Load ``cfg.name`` and carve a fixed validation split (``val_size`` examples, chosen by ``split_seed``, not by
    the run's seed, so every run of a sweep validates on the same ones) from its training split. ``model_cfg``:
    the model whose tokenizer a text dataset needs."""
    check(cfg)
    train, test = LOADERS[cfg.name].read(cfg, model_cfg)
    require(cfg.val_size < len(train), "data.val_size", cfg.val_size, f"fewer than the {len(train)} training examples")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.split_seed))
    val, train = train.subset(order[: cfg.val_size]).for_evaluation(), train.subset(order[cfg.val_size:])
    if cfg.get("train_size") is not None:
        train = train.subset(torch.arange(min(cfg.train_size, len(train))))
    if cfg.get("test_size") is not None:  # quick runs: the first images of the fixed test split
        test = test.subset(torch.arange(min(cfg.test_size, len(test))))
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    log.info("data %s: %d train, %d val, %d test examples of %s, %d classes%s", cfg.name, len(train), len(val),
             len(test), train.example_shape, num_classes, ", streamed from disk" if train.streamed else "")
    return Dataset(train, val, test, num_classes, LOADERS[cfg.name].metric(cfg))


def held_out(count: int, cfg: Any, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For data without a test split: a fixed test split of ``size`` (default ``val_size``) examples, chosen by
    ``split_seed + 1`` (the validation split is then chosen from the rest by ``split_seed``). Returns (train, test)
    indices."""
    size = cfg.val_size if size is None else size
    order = torch.randperm(count, generator=torch.Generator().manual_seed(cfg.split_seed + 1))
    return order[size:], order[:size]
