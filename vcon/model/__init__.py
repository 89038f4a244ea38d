"""Models (the ``model`` config group): a pretrained classifier from a local folder, a folder an installed Python
package ships (``package:<package>/<folder>``, ``vcon.hub.local``) or a hub id, or one built from its configuration
with random weights. ``inputs`` says what it takes: ``image`` (a ViT; the default) or ``text`` (a BERT-style encoder,
with its tokenizer)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vcon import hub
from vcon.data.augment import Pipeline
from vcon.data.text import TextPipeline, check_max_length, tokenizer, tokenizer_name
from vcon.errors import ConfigError, require
from vcon.schema import (
    FLAG,
    MAPPING,
    Allowed,
    check_settings,
    integer,
    items,
    number,
    one_of,
    optional,
    registered,
    setting,
    text,
)

log = logging.getLogger(__name__)
SOURCES = ("pretrained", "scratch")
FOLDER_OR_HUB_ID = text("a folder in save_pretrained format, package:<package>/<folder> (one an installed Python "
                        "package ships), or a hub id")
SHA256 = Allowed("64 hexadecimal digits", lambda v: isinstance(v, str) and len(v) == 64
                 and all(c in "0123456789abcdef" for c in v.lower()))
WEIGHTS = "model.safetensors"  # what model.sha256 is the digest of


@dataclasses.dataclass
class ModelConfig:
    """The keys of every ``model`` option (``inputs``, which chooses the schema, aside): ``pretrained`` for
    ``source: pretrained``, ``config`` (transformers' settings, for ``AutoConfig.for_model``) for ``scratch``."""

    name: str = setting(text("a name for tables and run ids"))
    source: str = setting(one_of(*SOURCES))
    pretrained: str | None = setting(optional(FOLDER_OR_HUB_ID, "source=scratch"), None)
    config: Any = setting(optional(MAPPING, "source=pretrained"), None)
    # the SHA-256 of a local pretrained folder's model.safetensors, checked before it is read
    sha256: str | None = setting(optional(SHA256, "not checked"), None)
    # compress from the run's dense fine-tune (vcon/app/job.py), trained first where it is not finished
    start_finetuned: bool = setting(FLAG, False)


@dataclasses.dataclass
class ImageModel(ModelConfig):
    mean: list = setting(items(number(), "a list of per-channel means", 1))
    std: list = setting(items(number(above=0), "a list of per-channel standard deviations > 0", 1))


@dataclasses.dataclass
class TextModel(ModelConfig):
    tokenizer: str | None = setting(optional(FOLDER_OR_HUB_ID, "the pretrained model's own"), None)
    max_positions: int = setting(integer(1, means="the model's number of positions"))


def _check_image(cfg: Any) -> None:
    require(len(cfg.mean) == len(cfg.std), "model.std", list(cfg.std), f"as many values as model.mean={list(cfg.mean)}")


def _check_text(cfg: Any) -> None:
    require(cfg.source == "pretrained" or cfg.get("tokenizer"), "model.tokenizer", cfg.get("tokenizer"),
            "a tokenizer (a folder in save_pretrained format, or a hub id) for a model built from its config")


def _image_pipeline(cfg: Any, net: nn.Module, num_classes: int, device: torch.device, compiled: bool) -> Any:
    return Pipeline(cfg.train.augment, net.config.image_size, net.config.num_channels, list(cfg.model.mean),
                    list(cfg.model.std), num_classes, device, compiled=compiled)


def _text_pipeline(cfg: Any, net: nn.Module, num_classes: int, device: torch.device, compiled: bool) -> Any:
    return TextPipeline(tokenizer(tokenizer_name(cfg.model)).pad_token_id, num_classes, device)


def _text_scratch(cfg: Any) -> dict[str, Any]:
    """A text model built from its config takes its tokenizer's vocabulary and padding token."""
    tok = tokenizer(tokenizer_name(cfg))
    return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}


def _image_example(config: Any, batch: int) -> torch.Tensor:
    return torch.randn(batch, config.num_channels, config.image_size, config.image_size)


def _text_example(config: Any, batch: int, length: int = 128) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (batch, min(length, config.max_position_embeddings)))


def _save_tokenizer(folder: Path, cfg: Any) -> None:
    tokenizer(tokenizer_name(cfg)).save_pretrained(folder)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a model takes: its transformers auto class, the keyword argument it takes them by (its
    ``main_input_name``: how a built model says which kind it is), its checks (alone, and the data's keys against
    it), the pipeline that turns a dataset's batches into its keyword arguments, a random batch of its main input
    (export's measurements), what a model built from its config takes from elsewhere, and what goes beside it when it
    is saved in transformers format."""

    auto_class: str
    main_input: str
    check: Callable[[Any], None]
    pipeline: Callable[..., Any]
    example: Callable[[Any, int], torch.Tensor]
    check_with: Callable[[Any, Any], None] = lambda data_cfg, model_cfg: None
    scratch: Callable[[Any], dict[str, Any]] = lambda cfg: {}
    save_with: Callable[[Path, Any], None] = lambda folder, cfg: None
    capturable: bool = True  # a training step that CUDA graphs can replay: its batches all have one shape
    schema: type = ModelConfig  # its keys (vcon/schema.py)


INPUTS = {
    "image": Inputs("AutoModelForImageClassification", "pixel_values", _check_image, _image_pipeline, _image_example,
                    schema=ImageModel),
    "text": Inputs("AutoModelForSequenceClassification", "input_ids", _check_text, _text_pipeline, _text_example,
                   check_with=check_max_length, scratch=_text_scratch, save_with=_save_tokenizer,
                   capturable=False,  # each batch has its own length (padded to its longest text)
                   schema=TextModel),
}


def inputs(cfg: Any) -> str:
    return cfg.get("inputs", "image")


def input_kind(cfg: Any) -> Inputs:
    """The entry of ``INPUTS`` for what the configured model takes."""
    return INPUTS[inputs(cfg)]


def check(cfg: Any) -> None:
    """Cheap checks of the ``model`` config: its settings against its input kind's schema, then how they fit
    together."""
    check_settings(cfg, registered(INPUTS, "model.inputs", inputs(cfg)).schema, "model")
    key, what = (("pretrained", FOLDER_OR_HUB_ID.text) if cfg.source == "pretrained" else
                 ("config", "transformers' settings of the model, for AutoConfig.for_model"))
    require(cfg.get(key) is not None, f"model.{key}", cfg.get(key), f"{what} (model.source={cfg.source})")
    folders = {key: hub.local(str(name), f"model.{key}") for key, name in _names(cfg).items()}  # a package: installed
    require(cfg.get("sha256") is None or folders.get("pretrained") is not None, "model.sha256", cfg.get("sha256"),
            "null for a hub id (it is checked against a local folder's model.safetensors)")
    input_kind(cfg).check(cfg)


def _names(cfg: Any) -> dict[str, str]:
    """The model's and the tokenizer's names (folders, packages' folders or hub ids) that the config gives."""
    names = {"pretrained": cfg.get("pretrained") if cfg.source == "pretrained" else None,
             "tokenizer": cfg.get("tokenizer")}
    return {key: str(name) for key, name in names.items() if name is not None}


def needs_hub(cfg: Any) -> bool:
    return any(hub.local(name) is None for name in _names(cfg).values())


def example_inputs(model: nn.Module, batch: int) -> dict[str, torch.Tensor]:
    """Random inputs of the kind ``model`` takes (``export``'s latency and checks)."""
    kind = {kind.main_input: kind for kind in INPUTS.values()}[model.main_input_name]  # what the model says it takes
    return {kind.main_input: kind.example(model.config, batch)}


_SKELETONS: dict[str, nn.Module] = {}  # by model config: a sweep's checks build each model's once


def skeleton(cfg: Any) -> nn.Module | None:
    """The configured model's structure on the meta device, for the checks that need its module names and shapes
    (which modules a recipe's groups take, whether a rank fits) before anything loads; None where that would need
    the hub. Kept for the next check of the same model: nothing may change it."""
    if needs_hub(cfg):
        return None
    key = json.dumps({k: cfg[k] for k in cfg}, default=str, sort_keys=True)
    if key not in _SKELETONS:
        import transformers

        kind = INPUTS[inputs(cfg)]
        config = (transformers.AutoConfig.for_model(**cfg.config, **kind.scratch(cfg)) if cfg.source == "scratch" else
                  transformers.AutoConfig.from_pretrained(str(hub.local(str(cfg.pretrained)))))
        with torch.device("meta"):  # names and shapes only: no weight is read or allocated
            _SKELETONS[key] = getattr(transformers, kind.auto_class).from_config(config)
    return _SKELETONS[key]


def build(cfg: Any, num_classes: int) -> nn.Module:
    """``source: pretrained`` loads ``pretrained`` (a folder in ``save_pretrained`` format, or a hub id) and gives
    it a ``num_classes`` head if its own differs; ``source: scratch`` builds ``AutoConfig.for_model(**cfg.config)``
    (a text model's vocabulary is its tokenizer's)."""
    import transformers

    check(cfg)
    kind = input_kind(cfg)
    auto = getattr(transformers, kind.auto_class)
    if cfg.source == "scratch":
        return auto.from_config(transformers.AutoConfig.for_model(**cfg.config, **kind.scratch(cfg),
                                                                  num_labels=num_classes))
    kwargs = dict(num_labels=num_classes, ignore_mismatched_sizes=True)
    folder = hub.local(str(cfg.pretrained))
    if folder is None:
        model = hub.from_pretrained(auto, str(cfg.pretrained), **kwargs)
    else:
        _check_weights(folder, cfg.get("sha256"))
        model = auto.from_pretrained(str(folder), **kwargs)
    log.info("model %s: %.2f M parameters", cfg.name, sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def _check_weights(folder: Path, sha256: str | None) -> None:
    """``model.sha256`` against the folder's weights, before anything reads them: a damaged or foreign file is a
    message here, not a traceback from deep inside the loader."""
    if sha256 is None:
        return
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"model.sha256 is set but {folder} has no {WEIGHTS} to check; set model.sha256=null or "
                          "choose the folder of the model it belongs to")
    with open(weights, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != sha256.lower():
        raise ConfigError(f"{weights} is damaged or not the model's weights: its SHA-256 is {digest}, model.sha256 "
                          f"expects {sha256}; nothing was loaded. Reinstall or copy the model again, or set "
                          "model.sha256 to the digest of the file you mean")


ASSETS = Path(__file__).parent / "assets"  # models shipped inside the package


def asset(name: str) -> str:
    """Path of a model shipped inside the package (``${asset:vit-micro}`` in configs)."""
    return str(ASSETS / name)
