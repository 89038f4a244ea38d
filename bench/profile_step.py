"""Where a training step's time goes: torch.profiler over a few steps of one configuration, the kernels that take
the most device time, host versus device time, and the cost of launching an empty kernel on this machine.

    python bench/profile_step.py --config vanilla            # ViT-T/16, paper recipe, what a run on CUDA uses
    python bench/profile_step.py --config prune --compile false --precision fp32

A diagnostic for bench/train_speed.py's figures; prints tables, asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import torch
import train_speed  # bench/train_speed.py: the same configurations, built the same way
from torch.profiler import ProfilerActivity, profile


def launch_latency_us(device: torch.device, n: int = 2000) -> float:
    """Host time per launch of a tiny kernel, queued back to back: the floor under every kernel of a step."""
    x = torch.zeros(1, device=device)
    for _ in range(100):
        x.add_(1)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    torch.cuda.synchronize(device)
    return 1e6 * (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="vanilla", choices=list(train_speed.CONFIGS))
    parser.add_argument("--model", default="vit-tiny-scratch")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--compile", default="true")
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    print(f"launch latency: {launch_latency_us(device):.1f} us per tiny kernel")
    overrides, beta_value, recipe = train_speed.CONFIGS[args.config]
    cfg = train_speed.compose_config(args.model, "paper", [*overrides, f"train.precision={args.precision}",
                                                           f"train.compile={args.compile}"])
    controller, pipeline, step, _ = train_speed.build(cfg, beta_value, device, recipe)
    print("attention implementation:", controller.model.config._attn_implementation)
    images = train_speed.fake_cifar(cfg, device, 10_000)
    index = torch.randint(0, len(images), (128,), device=device)
    prepared = [pipeline.train_batch(images.inputs[index], images.labels[index],
                                     *pipeline.draw_mix(128, torch.Generator()))]
    for _ in range(8):
        step.optimize(prepared)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step.optimize(prepared)
        torch.cuda.synchronize(device)
    wall = (time.perf_counter() - start) / args.steps
    events = prof.key_averages()
    on_device = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]  # kernels, not aten ops
    device_us = sum(e.self_device_time_total for e in on_device) / args.steps
    kernels = sum(e.count for e in on_device) / args.steps
    print(f"{args.config} {args.precision} compile={args.compile} cudnn.benchmark={args.cudnn_benchmark}: "
          f"wall {1e3 * wall:.1f} ms/step under the profiler, device busy {device_us / 1e3:.1f} ms/step, "
          f"{kernels:.0f} kernels/step")
    print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
