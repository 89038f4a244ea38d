"""Real compressed storage of a β = 0 model, its loader, and what it measures (``vcon-export <run dir>`` is
``vcon/app/export_run.py``).

Masks and fake quantization only simulate compression: the training model still holds dense fp32 matrices. An
export keeps what the β = 0 model needs and nothing else, each compression packing its own layers
(``Compression.pack``): pruned layers as kept values + positions, binary layers as 1 bit per weight + a scale, low
rank as the two factors, the rest of the model as it was. The folder is transformers-style:

    config.json         the model's config, plus ``vcon_export``: the compression and, per layer, its format
    model.safetensors   packed tensors (uint8 bit fields, fp32 values and scales) and the untouched ones
    export.json         the figures: bytes against dense and against the minimum, parameters, multiply-adds,
                        CPU latency dense against exported

``load(folder)`` rebuilds a runnable model from torch, transformers, safetensors and ``vcon.compression`` alone (no
training code, no Hydra): the skeleton is built on the meta device, so no dense weight of a compressed layer is ever
allocated. Everything that can be checked is checked before anything is written, and the folder appears whole
(written beside the target, then renamed) or not at all.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vcon import model
from vcon.compression import Packed, from_config, to_config
from vcon.compression.recipe import config_of
from vcon.core.controller import Controller
from vcon.errors import ExportError
from vcon.layers import LAYERS
from vcon.method.blend import finalize_

CONFIG, WEIGHTS, FIGURES = "config.json", "model.safetensors", "export.json"
KEY = "vcon_export"
BATCHES = (1, 64)


def load(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The exported model, ready for inference (``model(pixel_values=x).logits``, or ``model(input_ids=...)``)."""
    import transformers
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        raw = json.loads((folder / CONFIG).read_text())
        spec = raw.pop(KEY)
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"{folder} is not a vcon export (no readable {CONFIG} with a {KEY!r} entry: {e})") from e
    config, architecture = _model_class(folder, raw, transformers)
    with torch.device("meta"):  # a skeleton: the dense matrices of the compressed layers are never allocated
        model = architecture(config)
    tensors = load_file(folder / WEIGHTS)
    for name, meta in spec["layers"].items():
        own = {key[len(name) + 1:]: tensors.pop(key) for key in list(tensors) if key.startswith(name + ".")}
        meta = dict(meta)  # version 2: each layer names its compression (a recipe's groups differ); 1: one for all
        compression = from_config(meta.pop("compression", None) or spec["compression"])
        model.set_submodule(name, compression.unpack(Packed(own, meta, 0, 0)))
    for name in {n for n, _ in model.named_buffers()} - set(model.state_dict()):  # not in a state dict
        owner, _, leaf = name.rpartition(".")
        if name in tensors:
            setattr(model.get_submodule(owner), leaf, tensors.pop(name))
    _, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unexpected or empty:
        raise ExportError(f"{folder}/{WEIGHTS} does not match its {CONFIG}: unexpected {unexpected[:5]}, "
                          f"missing {empty[:5]}")
    return model.eval().to(device)


def _model_class(folder: Path, raw: dict[str, Any], transformers: Any) -> tuple[Any, type]:
    """The config and the model class that ``config.json`` names, accepted only when they are transformers' own: a
    known ``model_type`` and a ``PreTrainedModel`` class (a name is looked up, never anything else run)."""
    model_type, names = raw.get("model_type"), raw.get("architectures") or [None]
    if not (isinstance(model_type, str) and model_type in transformers.CONFIG_MAPPING):
        raise ExportError(f"{folder}/{CONFIG} has model_type={model_type!r}: expected a transformers model type "
                          "(transformers.CONFIG_MAPPING)")
    architecture = getattr(transformers, names[0], None) if isinstance(names[0], str) else None
    if not (isinstance(architecture, type) and issubclass(architecture, transformers.PreTrainedModel)):
        raise ExportError(f"{folder}/{CONFIG} has architectures[0]={names[0]!r}: expected a transformers model class "
                          "(a PreTrainedModel subclass, e.g. ViTForImageClassification)")
    return transformers.CONFIG_MAPPING[model_type].from_dict(raw), architecture


def export_model(controller: Controller, out: str | Path, timing_s: float = 1.0) -> dict[str, Any]:
    """Export the β = 0 model of ``controller`` (``controller.finalize()`` ends a transition early) into the new
    folder ``out``; returns the figures (also in ``out/export.json``). ``timing_s``: seconds per latency measurement
    (0: no timing)."""
    from safetensors.torch import save_file

    out = Path(out)
    check_target(out)
    names = controller.names
    if controller.dense:
        raise ExportError(NOTHING_TO_EXPORT)
    if controller.beta.value != 0:
        raise ExportError(f"the model is at β = {controller.beta.value:.4f}, not 0: only the fully compressed model "
                          "is exported (controller.finalize() ends the transition)")
    net = copy.deepcopy(controller.model).cpu().eval()
    finalize_(net, names)  # plain layers and no hooks: the copy computes its own β = 0 model, and alone
    packs = {name: controller.compression_of(name).pack(net.get_submodule(name)) for name in names}
    state = net.state_dict()  # and the buffers it leaves out (BERT's position ids), which a skeleton cannot rebuild
    tensors = {k: v for k, v in [*state.items(), *((n, b) for n, b in net.named_buffers() if n not in state)]
               if not any(k.startswith(n + ".") for n in names)}
    tensors |= {f"{name}.{k}": v for name, p in packs.items() for k, v in p.tensors.items()}
    config = net.config.to_dict() | {"architectures": [type(net).__name__], KEY: {
        "version": 2, "compression": config_of(controller.compression),
        "layers": {name: p.meta | {"compression": to_config(controller.compression_of(name))}
                   for name, p in packs.items()}}}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=str))
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, tmp / WEIGHTS,
                  metadata={"format": "pt"})
        loaded = load(tmp)
        figures = _figures(net, config_of(controller.compression), packs, loaded, tmp, dense_twin(net, names),
                           timing_s)
        (tmp / FIGURES).write_text(json.dumps(figures, indent=2))
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


NOTHING_TO_EXPORT = ("compression=none has nothing compressed to export; a dense run is saved in transformers "
                      "format with save_pretrained=true")


def check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"export target {out} is not empty; allowed: a new or empty folder (--out DIR)")


def dense_twin(net: nn.Module, names: list[str]) -> nn.Module:
    """The β = 0 model as training simulates it: every compressed layer a dense fp32 ``nn.Linear`` computing the
    same function (C(W), or the product of the factors). What "dense" means in the latency figures. ``net``: a
    blended model at β = 0 or a finalized one; the twin is finalized (no hooks: it computes nothing of ``net``'s)."""
    twin = copy.deepcopy(net)
    finalize_(twin, names)
    with torch.no_grad():
        for name in names:
            module = twin.get_submodule(name)
            if not isinstance(module, nn.Linear):  # low rank's factors: their product
                twin.set_submodule(name, LAYERS["Linear"].plain(nn.Parameter(module.dense_weight()), module.bias))
    return twin.eval()


def latency(nets: list[nn.Module], inputs: dict[str, torch.Tensor], budget_s: float, min_reps: int = 3,
            clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Median seconds of one forward pass of each net: warm-up, then rounds that run each net once in turn (so that
    a busy machine slows them alike) until ``budget_s`` per net is spent (at least ``min_reps`` rounds). ``clock``:
    wall time; ``time.process_time`` counts this process's CPU time instead, which other load on a shared machine
    changes far less (with one thread it is the compute alone)."""
    sync = torch.cuda.synchronize if next(iter(inputs.values())).is_cuda else (lambda: None)
    times: list[list[float]] = [[] for _ in nets]
    with torch.inference_mode():
        for net in nets:
            net(**inputs)
        sync()
        while len(times[0]) < min_reps or (sum(times[0]) < budget_s and len(times[0]) < 200):
            for net, spent in zip(nets, times):
                start = clock()
                net(**inputs)
                sync()
                spent.append(clock() - start)
    return [statistics.median(t) for t in times]


def _tokens(loaded: nn.Module, names: list[str], inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """Tokens per image that each compressed layer sees (its input rows per image), by a forward hook."""
    seen: dict[str, int] = {}
    hooks = [loaded.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: seen.__setitem__(n, args[0].numel() // args[0].shape[-1] // batch)) for n in names]
    batch = len(next(iter(inputs.values())))
    with torch.inference_mode():
        loaded(**inputs)
    for hook in hooks:
        hook.remove()
    return seen


def _figures(net: nn.Module, compression: dict[str, Any], packs: dict[str, Packed], loaded: nn.Module,
             folder: Path, dense: nn.Module, timing_s: float) -> dict[str, Any]:
    one = model.example_inputs(loaded, 1)
    tokens = _tokens(loaded, list(packs), one)
    layer_bytes = sum(t.numel() * t.element_size() for p in packs.values() for t in p.tensors.values())
    dense_layer_params = {n: math.prod(p.meta["shape"]) for n, p in packs.items()}
    biases = sum(p.tensors["bias"].numel() if "bias" in p.tensors else
                 p.tensors.get("up.bias", torch.empty(0)).numel() for p in packs.values())
    minimum = math.ceil(sum(p.minimum_bits for p in packs.values()) / 8)
    runtimes = {}
    for name in packs:
        module = loaded.get_submodule(name)
        entry = runtimes.setdefault(type(module).__name__, {"layers": 0, "execution": module.execution})
        entry["layers"] += 1
    storage: dict[str, int] = {}
    for p in packs.values():
        kind = "+".join(str(p.meta[k]) for k in ("positions", "values") if k in p.meta) or "low-rank factors"
        storage[kind] = storage.get(kind, 0) + 1
    with torch.inference_mode():
        diff = float((loaded(**one).logits - net(**one).logits).abs().max())
    figures: dict[str, Any] = {
        "compression": compression,
        "layers": len(packs),
        "storage": storage,  # per layer: how positions and values are coded
        "runtime": runtimes,  # per runtime module: how it computes
        "bytes": {
            "file": (folder / WEIGHTS).stat().st_size,
            "dense_model": 4 * sum(p.numel() for p in dense.parameters()),
            "compressed_layers": layer_bytes,
            "compressed_layers_dense": 4 * (sum(dense_layer_params.values()) + biases),
            "compressed_layers_minimum": minimum,
            "ratio_to_minimum": layer_bytes / max(minimum, 1),
        },
        "params": {"before": sum(dense_layer_params.values()), "after": sum(p.weights for p in packs.values())},
        "mult_adds_per_image": {"before": sum(tokens[n] * dense_layer_params[n] for n in packs),
                                "after": sum(tokens[n] * p.weights for n, p in packs.items())},
        "max_abs_logit_difference": diff,  # exported against the β = 0 model, one random input
        "latency": {},
    }
    if timing_s > 0:
        figures["latency"] = {"device": "cpu", "threads": torch.get_num_threads(), "processor": _processor()}
        for batch in BATCHES:
            d, e = latency([dense, loaded], model.example_inputs(loaded, batch), timing_s)
            figures["latency"][f"batch_{batch}"] = {
                "dense_ms": 1e3 * d, "exported_ms": 1e3 * e, "dense_images_per_s": batch / d,
                "exported_images_per_s": batch / e, "exported_slower_than_dense": e > d}
    return figures


def _processor() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def table(figures: dict[str, Any], title: str) -> str:
    """The figures of one export as a Markdown table: dense against exported."""
    b, p, m = figures["bytes"], figures["params"], figures["mult_adds_per_image"]
    rows = [
        ("bytes on disk, whole model", f"{b['dense_model']:,}", f"{b['file']:,}"),
        ("bytes, compressed layers (minimum; ratio)", f"{b['compressed_layers_dense']:,}",
         f"{b['compressed_layers']:,} ({b['compressed_layers_minimum']:,}; {b['ratio_to_minimum']:.3f})"),
        ("parameters, compressed layers", f"{p['before']:,}", f"{p['after']:,}"),
        ("multiply-adds per image, compressed layers", f"{m['before']:,}", f"{m['after']:,}"),
    ]
    for batch in BATCHES:
        t = figures["latency"].get(f"batch_{batch}")
        if t:
            slower = " (slower than dense)" if t["exported_slower_than_dense"] else ""
            rows.append((f"CPU latency, batch {batch} (ms)", f"{t['dense_ms']:.2f}", f"{t['exported_ms']:.2f}{slower}"))
            rows.append((f"throughput, batch {batch} (images/s)", f"{t['dense_images_per_s']:.0f}",
                         f"{t['exported_images_per_s']:.0f}"))
    rows.append(("execution", "dense fp32 matmul", "; ".join(f"{k}: {v['execution']}"
                                                              for k, v in figures["runtime"].items())))
    lines = [title, "", "| | dense | exported |", "|---|---|---|"] + [f"| {a} | {b_} | {c} |" for a, b_, c in rows]
    return "\n".join(lines)
