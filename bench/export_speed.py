"""Bytes and inference speed of exported models, dense against each compression, on a CPU or a GPU.

    python bench/export_speed.py                 # this CPU: vit-micro and a random ViT-T/16, every compression
    python bench/export_speed.py --device cuda   # the same on a GPU, plus 2:4 semi-structured kernels (fp16)
    OMP_NUM_THREADS=1 python bench/export_speed.py --clock cpu   # a shared CPU: one thread's CPU time, not wall time

Each model gets each compression at β = 0 (no training: speed and bytes do not depend on the values), is exported
into a temporary folder, loaded back with ``vcon.export.load``, and timed against its dense twin (the β = 0 model as
training simulates it: dense fp32 matrices) with ``vcon.export.latency`` (warm-up, alternating rounds, median).
Needs torch, transformers, safetensors and vcon's own modules only (no Hydra). Prints a Markdown table and writes
bench/results/export_speed_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

from vcon import compress_, export, model
from vcon.compression import from_config
from vcon.model import asset

COMPRESSIONS = {
    "prune 0.9": {"name": "prune", "ratio": 0.9},
    "prune 2:4": {"name": "prune", "ratio": 0.5, "granularity": "2:4"},
    "binary": {"name": "quant", "bits": 1},
    "low rank 16": {"name": "lrd", "rank": 16},
    "prune 0.9 + binary": {"name": "chain", "steps": [{"name": "prune", "ratio": 0.9}, {"name": "quant", "bits": 1}]},
}
MODELS = {
    "vit-micro": lambda: AutoModelForImageClassification.from_pretrained(asset("vit-micro")),
    "ViT-T/16 (random)": lambda: ViTForImageClassification(ViTConfig(
        hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, image_size=224,
        patch_size=16, num_labels=10)),
}


def compressed(build, spec):
    """The model compressed one-shot (β = 0), every nn.Linear in its blocks: its controller."""
    torch.manual_seed(0)
    return compress_(build().eval(), from_config(spec))


def semi_structured(twin: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    """The dense twin of a 2:4 model in fp16 with each compressed weight in the GPU's 2:4 sparse kernel format."""
    from torch.sparse import to_sparse_semi_structured

    twin = twin.half()
    for name in names:
        linear = twin.get_submodule(name)
        linear.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
    return twin


def timed_rows(controller, folder, label, budget, device, clock):
    net, names = controller.model, controller.names
    loaded = export.load(folder, device)
    twin = export.dense_twin(net, names).to(device)
    rows = {}
    for batch in export.BATCHES:
        x = {k: v.to(device) for k, v in model.example_inputs(loaded, batch).items()}
        d, e = export.latency([twin, loaded], x, budget, clock=clock)
        rows[f"batch_{batch}"] = {"dense_ms": 1e3 * d, "exported_ms": 1e3 * e, "dense_images_per_s": batch / d,
                                  "exported_images_per_s": batch / e, "exported_slower_than_dense": e > d,
                                  "execution": "fp32, " + "; ".join(v["execution"] for v in
                                                                      _runtimes(loaded, names).values())}
        if "2:4" in label and device == "cuda":  # the kernel 2:4 exists for: fp16 dense against fp16 semi-structured sparse
            try:
                half = twin.half()
                sparse = semi_structured(export.dense_twin(net, names).cuda(), names)
                hd, hs = export.latency([half, sparse], {k: v.half() if v.is_floating_point() else v for k, v in x.items()}, budget)
                rows[f"batch_{batch}"] |= {"fp16_dense_ms": 1e3 * hd, "fp16_semi_structured_ms": 1e3 * hs}
            except Exception as e:  # noqa: BLE001  (report what the card refused, rather than no table at all)
                rows[f"batch_{batch}"]["fp16_semi_structured_error"] = f"{type(e).__name__}: {e}"[:300]
            twin = export.dense_twin(net, names).cuda()
    return rows


def slow(t: dict) -> str:
    return " **slower**" if t["exported_slower_than_dense"] else ""


def _runtimes(loaded, names):
    return {type(loaded.get_submodule(n)).__name__: {"execution": loaded.get_submodule(n).execution} for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--budget-s", type=float, default=1.0, help="seconds per latency measurement")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="cpu: this process's CPU time (time.process_time), for a CPU shared with other load; "
                             "best with OMP_NUM_THREADS=1")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="the folder of the JSON file")
    args = parser.parse_args()
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu times CPU work: it needs --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    card = torch.cuda.get_device_name() if args.device == "cuda" else None
    results = {"device": args.device, "card": card, "threads": torch.get_num_threads(), "clock": args.clock,
               "runs": []}
    lines = [f"device: {card or 'cpu, ' + str(torch.get_num_threads()) + ' threads'}; clock: {args.clock}", "",
             "| model | compression | file bytes, dense → exported | compressed layers: bytes (minimum; ratio) | "
             "batch 1: dense → exported (ms) | batch 64: dense → exported (ms) | batch 64 images/s: dense → exported | "
             "exported execution |", "|---|---|---|---|---|---|---|---|"]
    for model_name in args.models:
        for label, spec in COMPRESSIONS.items():
            controller = compressed(MODELS[model_name], spec)
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "export"
                own_timing = args.device == "cuda" or args.clock == "cpu"  # else export_model's wall-clock timing
                figures = export.export_model(controller, folder, timing_s=0 if own_timing else args.budget_s)
                if own_timing:
                    figures["latency"] = timed_rows(controller, folder, label, args.budget_s, args.device, clock)
            results["runs"].append({"model": model_name, "compression": label, "figures": figures})
            b, t1, t64 = figures["bytes"], figures["latency"]["batch_1"], figures["latency"]["batch_64"]
            extra = "".join(f"; fp16 dense {t['fp16_dense_ms']:.2f} → 2:4 {t['fp16_semi_structured_ms']:.2f} ms"
                            for t in [t64] if "fp16_semi_structured_ms" in t)
            lines.append(
                f"| {model_name} | {label} | {b['dense_model']:,} → {b['file']:,} | {b['compressed_layers']:,} "
                f"({b['compressed_layers_minimum']:,}; {b['ratio_to_minimum']:.3f}) | {t1['dense_ms']:.2f} → "
                f"{t1['exported_ms']:.2f}{slow(t1)} | {t64['dense_ms']:.1f} → {t64['exported_ms']:.1f}{slow(t64)} | "
                f"{t64['dense_images_per_s']:.0f} → {t64['exported_images_per_s']:.0f} | "
                f"{'; '.join(v['execution'] for v in figures['runtime'].values())}{extra} |")
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    out = Path(args.out) / f"export_speed_{args.device}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\n(written to {out})")


if __name__ == "__main__":
    main()
