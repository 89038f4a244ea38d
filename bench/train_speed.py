"""Training throughput: images/s per configuration, end to end and for the optimizer step alone.

It builds what a run builds (``vcon.train.loop.build_model`` / ``build_step`` from the real Hydra config) and times the
``Step`` that ``run.py`` trains through, on CIFAR-sized uint8 images held on the device as a CIFAR-10 run holds them:

* ``e2e``: indices in, uint8 images gathered, RandAugment and MixUp on the device, resize, forward, backward, AdamW;
* ``step``: one prepared batch, only forward, backward and AdamW (the reference's ``*/gpu``);
* ``pipeline``: the augmentation alone (the reference's ``loader_only``).

With ``graph`` in a variant (``--variants bf16:true:graph``) each of the three is replayed as a CUDA graph
(``train.cuda_graph``, ``vcon/train/cuda_graph.py``): e2e through the ``Step`` a run uses, the other two wrapped alike.

    python bench/train_speed.py                     # CUDA: ViT-T/16, 224 px, batch 128, the paper recipe
    python bench/train_speed.py --device cpu --model vit-micro --train micro   # the offline default run
    python bench/train_speed.py --device cpu --configs prune,prune2,prune_vcon,prune2_vcon,mixed,mixed_vcon  # recipes
    python bench/train_speed.py --variants bf16:true:graph,bf16:true           # CUDA graphs against none
    python bench/train_speed.py --device cpu --model vit-micro --train micro --distill   # the teacher's cost

Compressions are timed one-shot (β = 0, originals dropped) and in the VCON transition (β = 0.5, both branches).
With ``--distill`` each compressed configuration is timed again taught by the dense model (``distill=logits``: the
teacher's forward in every step), and the table adds the teacher's cost in time and memory.
Figures are compared with the reference implementation's (``bench/reference-throughput-h100.json``, measured on an
H100) and written to ``bench/results/``. Not a test: no figure here is asserted.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from vcon import Controller, data  # noqa: E402
from vcon.app import config  # noqa: E402
from vcon.compression import from_config  # noqa: E402
from vcon.data.augment import Pipeline  # noqa: E402
from vcon.distill import Teacher  # noqa: E402
from vcon.schedule import Schedule  # noqa: E402
from vcon.train import loop as train  # noqa: E402
from vcon.train import step as train_step  # noqa: E402
from vcon.train.cuda_graph import CapturedStep  # noqa: E402

def _recipe(attention: dict, mlp: dict) -> dict:
    return {"name": "recipe", "groups": {"attention": {"patterns": ["*.attention.*"], **attention},
                                         "mlp": {"patterns": ["*.mlp.*"], **mlp}}}


PRUNE = {"name": "prune", "ratio": 0.9, "granularity": "layer"}
TWO_GROUPS = _recipe(PRUNE, PRUNE)  # the same pruning as prune's, in two groups: what grouping itself costs
MIXED = _recipe({"name": "quant", "bits": 1}, PRUNE)  # attention binary, the MLP pruned
# name -> (compression overrides, β while timed, a recipe instead); the names are the reference's, "vanilla" being
# ours "dense"; the recipes' are ours
CONFIGS = {
    "vanilla": (["compression=none"], 1.0, None),
    "prune": (["compression=prune"], 0.0, None),
    "prune_vcon": (["compression=prune"], 0.5, None),
    "quant": (["compression=quant"], 0.0, None),
    "quant_vcon": (["compression=quant"], 0.5, None),
    "lrd": (["compression=lrd"], 0.0, None),
    "lrd_vcon": (["compression=lrd"], 0.5, None),
    "prune2": ([], 0.0, TWO_GROUPS),
    "prune2_vcon": ([], 0.5, TWO_GROUPS),
    "mixed": ([], 0.0, MIXED),
    "mixed_vcon": ([], 0.5, MIXED),
}
DEFAULT_CONFIGS = [name for name, (_, _, recipe) in CONFIGS.items() if recipe is None]  # the reference's seven
REFERENCE = json.loads((ROOT / "bench" / "reference-throughput-h100.json").read_text())
REFERENCE_SETTING = ("vit-tiny-scratch", "paper", REFERENCE["batch"])  # what it measured: ViT-T/16, its recipe


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter  # --clock cpu: time.process_time, this process's CPU seconds, which other jobs on a shared
                           # machine leave alone (on the CPU, with --threads 1, they are its wall time on a quiet one)


def timed(fn, steps: int, device: torch.device, repeats: int) -> float:
    """Median over ``repeats`` of the seconds ``steps`` calls take (the device drained before and after)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = CLOCK()
        for _ in range(steps):
            fn()
        sync(device)
        times.append(CLOCK() - start)
    return statistics.median(times)


def compose_config(model: str, train_group: str, extra: list[str]):
    config.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=[f"model={model}", f"train={train_group}",
                                                        "tracking.wandb.mode=disabled", *extra])


def fake_cifar(cfg, device: torch.device, n: int) -> data.Split:
    """CIFAR-sized uint8 images at the model's native resolution for its data (32 px RGB, or 28 px grey for the
    Fashion-MNIST models): speed does not depend on the pixels, and the hub is not needed."""
    channels = cfg.model.config.num_channels if cfg.model.source == "scratch" else len(cfg.model.mean)
    side = 32 if channels == 3 else 28
    g = torch.Generator().manual_seed(0)
    return data.Split(torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n,), generator=g)).to(device)


def build(cfg, beta_value: float, device: torch.device, recipe: dict | None = None
          ) -> tuple[Controller, Pipeline, train_step.Step, Teacher | None]:
    """What a run builds (ViT, its teacher where ``distill`` asks, controller, pipeline, the step over 60 epochs of
    390 steps), with β held at ``beta_value`` (1, 0.5 or 0): a two-step linear schedule, moved by the controller as
    a run moves it."""
    compression = from_config(recipe or cfg.compression)
    net, pipeline = train.build_dense(cfg, 10, device)
    teacher = train.teacher_for(cfg, compression, net)
    controller = train.compress_target(cfg, net, compression, Schedule("linear", 2))
    for _ in range(round(2 * (1 - beta_value))):
        controller.step()  # at 0: the originals are dropped
    step = train_step.build_step(controller.model, pipeline, cfg.train, steps_per_epoch=390, total_steps=60 * 390,
                                 device=device, beta=controller.beta, teacher=teacher)
    return controller, pipeline, step, teacher


def measure(name: str, args, device: torch.device, precision: str, compile_: bool, graph: bool,
            distill: bool = False) -> dict:
    overrides, beta_value, recipe = CONFIGS[name]
    cfg = compose_config(args.model, args.train, [*overrides, f"distill={'logits' if distill else 'none'}",
                                                   f"train.precision={precision}",
                                                   f"train.compile={str(compile_).lower()}",
                                                   f"train.cuda_graph={str(graph).lower()}",
                                                   f"train.batch_size={args.batch}"])
    torch._dynamo.reset()  # every configuration compiles afresh: no cache entries left over from the last one
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _, pipeline, step, teacher = build(cfg, beta_value, device, recipe)
    images = fake_cifar(cfg, device, args.images)
    mix_rng = torch.Generator().manual_seed(0)

    def batch_indices() -> torch.Tensor:
        return torch.randint(0, len(images), (args.batch,), device=device)

    def e2e() -> None:
        index = batch_indices()
        step(images.inputs[index], images.labels[index], mix_rng)

    def augment(images_: torch.Tensor, labels: torch.Tensor, *mix: torch.Tensor) -> torch.Tensor:
        return pipeline.train_batch(images_, labels, *mix)[0]["pixel_values"]

    def optimize(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return step.optimize([({"pixel_values": x}, y)])

    if step.captured is not None:  # the step alone and the pipeline alone, captured like the whole step
        augment, optimize = (CapturedStep(fn, key=step.captured.key) for fn in (augment, optimize))

    def pipeline_only() -> None:
        index = batch_indices()
        augment(images.inputs[index], images.labels[index], *pipeline.draw_mix(args.batch, mix_rng))

    index = batch_indices()
    inputs, targets = pipeline.train_batch(images.inputs[index], images.labels[index],
                                           *pipeline.draw_mix(args.batch, mix_rng))
    prepared = inputs["pixel_values"], targets
    started = time.perf_counter()
    for _ in range(args.warmup):  # compilation (first calls), graph capture, allocator warm-up
        e2e()
        optimize(*prepared)
        pipeline_only()
    sync(device)
    warmup_s = time.perf_counter() - started
    row = {
        "config": name + ("+kd" if distill else ""), "precision": precision, "compile": compile_, "graph": graph,
        "beta": beta_value, "teacher_mib": _mib(teacher.model) if teacher else 0.0,
        "e2e": args.batch * args.steps / timed(e2e, args.steps, device, args.repeats),
        "step": args.batch * args.steps / timed(lambda: optimize(*prepared), args.steps, device, args.repeats),
        "pipeline": args.batch * args.steps / timed(pipeline_only, args.steps, device, args.repeats),
        "warmup_s": warmup_s,
    }
    if device.type == "cuda":  # since the build: weights, optimizer state, the teacher, activations
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"  {name:10s} {precision} compile={compile_!s:5s} graph={graph!s:5s}  e2e {row['e2e']:8.0f}  step {row['step']:8.0f}  "
          f"pipeline {row['pipeline']:8.0f} img/s  (warm-up {warmup_s:.1f} s)", flush=True)
    return row


def _mib(module: torch.nn.Module) -> float:
    """A module's weights and buffers (a teacher keeps no activations: it computes no gradients)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) / 2**20


def plain_loop(args, device: torch.device) -> float:
    """The floor: a bare PyTorch loop training the same dense model on the same uint8 batches — normalise,
    forward, cross-entropy, backward, AdamW — with none of vcon's machinery."""
    from vcon import model

    cfg = compose_config(args.model, args.train, [])
    torch.manual_seed(0)
    net = model.build(cfg.model, 10).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    images = fake_cifar(cfg, device, args.images)

    def one() -> None:
        index = torch.randint(0, len(images), (args.batch,), device=device)
        x = (images.inputs[index].float() / 255 - 0.5) / 0.5
        F.cross_entropy(net(pixel_values=x).logits, images.labels[index]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        one()
    return args.batch * args.steps / timed(one, args.steps, device, args.repeats)


def table(rows: list[dict], plain: float | None, device_name: str, comparable: bool = True) -> str:
    """The figures as Markdown; ``comparable``: the model, recipe and batch are the reference's (else no ratio)."""
    reference = REFERENCE["img_per_s"] if comparable else {}
    on_reference_card = "H100" in device_name
    lines = ["| configuration | precision | compiled | CUDA graph | e2e img/s | step img/s | pipeline img/s | "
             "reference e2e | e2e / reference |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = reference.get(f"{r['config']}/e2e")
        ratio = f"{r['e2e'] / ref:.2f}×" if ref else "–"
        if ref and not on_reference_card:
            ratio += " (other card)"
        lines.append(f"| {r['config']} | {r['precision']} | {r['compile']} | {r['graph']} | {r['e2e']:,.0f} | "
                     f"{r['step']:,.0f} | {r['pipeline']:,.0f} | {f'{ref:,.0f}' if ref else '–'} | {ratio} |")
    by_key = {(r["config"], r["precision"], r["compile"], r["graph"]): r for r in rows}
    overhead = []
    for base, limit in (("prune", 10), ("quant", 10), ("lrd", 40)):
        for (config, *variant), r in by_key.items():
            if config == f"{base}_vcon" and (base, *variant) in by_key:
                one_shot = by_key[(base, *variant)]
                extra = 100 * (one_shot["step"] / r["step"] - 1)
                extra_e2e = 100 * (one_shot["e2e"] / r["e2e"] - 1)
                overhead.append(f"| {base} | {' | '.join(map(str, variant))} | {extra:+.1f} % | {extra_e2e:+.1f} % | "
                                f"≤ {limit} % |")
    grouping = []
    for base in ("prune", "prune_vcon"):  # the same layers, the same pruning, in one group and in two
        for (config, *variant), r in by_key.items():
            if config == base.replace("prune", "prune2") and (base, *variant) in by_key:
                extra = 100 * (by_key[(base, *variant)]["step"] / r["step"] - 1)
                grouping.append(f"| {base} | {' | '.join(map(str, variant))} | {extra:+.1f} % | ≤ 10 % |")
    if grouping:
        lines += ["", "A two-group recipe's cost (time per step against the same pruning as one group):", "",
                  "| configuration | precision | compiled | CUDA graph | step | allowed |", "|---|---|---|---|---|---|",
                  *grouping]
    if overhead:
        lines += ["", "VCON's own cost while β > 0 (time per step against the same compression one-shot):", "",
                  "| compression | precision | compiled | CUDA graph | step | e2e | allowed |",
                  "|---|---|---|---|---|---|---|",
                  *overhead]
    taught = [(r, by_key[(name[:-3], *variant)]) for (name, *variant), r in by_key.items()
              if name.endswith("+kd") and (name[:-3], *variant) in by_key]
    if taught:
        lines += ["", "Distillation's cost (taught by the dense model, against the same configuration untaught):", "",
                  "| configuration | precision | compiled | CUDA graph | time a step | e2e | teacher's weights | peak "
                  "memory, taught / untaught |", "|---|---|---|---|---|---|---|---|"]
        for r, alone in taught:
            peak = (f"{r['peak_memory_gib']:.2f} / {alone['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in r
                    else "– (CPU)")
            lines.append(f"| {r['config']} | {r['precision']} | {r['compile']} | {r['graph']} | "
                         f"{100 * (alone['step'] / r['step'] - 1):+.1f} % | {100 * (alone['e2e'] / r['e2e'] - 1):+.1f} % "
                         f"| {r['teacher_mib']:.2f} MiB | {peak} |")
    if plain:
        lines += ["", f"plain PyTorch loop, same dense model and batches: {plain:,.0f} img/s"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="vit-tiny-scratch")
    parser.add_argument("--train", default="paper", help="the train config group: paper (RandAugment + MixUp) or "
                                                         "micro (the offline default run's: no augmentation)")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"a comma-separated list of {list(CONFIGS)}")
    parser.add_argument("--variants", default=None,
                        help="precision:compile[:graph], e.g. bf16:true:graph,bf16:true,fp32:false (default: what "
                             "a run on this device uses, bf16:true on CUDA and fp32:false on the CPU)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--plain", action="store_true", help="also time a bare PyTorch loop on the dense model")
    parser.add_argument("--distill", action="store_true", help="also time each compressed configuration taught by "
                                                               "the dense model (distill=logits)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU seconds, for a CPU shared with other jobs (use --threads 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's own)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.configs.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"--configs {unknown} not known; allowed: {list(CONFIGS)}")
    variants = args.variants or ("bf16:true" if device.type == "cuda" else "fp32:false")
    pairs = [(p, c == "true", g == ["graph"]) for p, c, *g in (v.split(":") for v in variants.split(","))]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = {"device": device_name, "torch": torch.__version__, "python": platform.python_version(),
              "model": args.model, "train": args.train, "batch": args.batch, "steps": args.steps,
              "repeats": args.repeats, "threads": torch.get_num_threads(), "clock": args.clock}
    try:
        import transformers
        header["transformers"] = transformers.__version__
    except ImportError:
        pass
    print(json.dumps(header), flush=True)
    rows = [measure(name, args, device, *variant, distill) for variant in pairs for name in names
            for distill in ((False, True) if args.distill and name != "vanilla" else (False,))]
    plain = plain_loop(args, device) if args.plain else None
    text = table(rows, plain, device_name, (args.model, args.train, args.batch) == REFERENCE_SETTING)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"train_speed-{device.type}-{args.model}-{stamp}.json"
    path.write_text(json.dumps({**header, "rows": rows, "plain_img_per_s": plain, "table": text}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
