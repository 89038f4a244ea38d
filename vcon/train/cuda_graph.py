"""A whole training step replayed as one CUDA graph (``train.cuda_graph``).

Why: a ViT-T step at batch 128 is ~2,000 small kernels (RandAugment, the blocks, the masks, AdamW). On an H200 the
host took ~40 ms to launch what the device ran in ~8 ms (``bench/results/profile_step-h200.txt``), even compiled.
Captured once and replayed, a step is one launch, and the device, not the host, sets the pace.

What makes a replay the same step as an eager call (``tests/test_cuda_graph.py`` checks each):

* every value that changes between steps is a device tensor updated in place outside the graph, or an input copied
  into the graph's static inputs: the batch, MixUp's λ and permutation (drawn on the host as in eager mode), β
  (``Beta.tensor``), the learning rate (a tensor in the optimizer's param groups, which torch's LR schedulers fill
  in place);
* random draws inside the step (RandAugment) come from the device's default generator, which advances per replay;
* nothing in the step reads a device value on the host (no ``.item()``, no data-dependent shape);
* a change of structure (β leaving 1 or reaching 0, the originals dropped) changes ``key()``, and the step is warmed
  up and captured again; the old graph and its memory are released.

Why not ``torch.compile(mode="reduce-overhead")``: its graphs cover only what is compiled (the blocks), not the
augmentation, the masks, the loss, the clipping and the optimizer, which are most of the launches here.
"""
from __future__ import annotations

from typing import Callable, Hashable

import torch


class CapturedStep:
    """Calls ``fn(*inputs)`` (device tensors in, one tensor out) eagerly for ``warmup`` calls (compilation,
    autotuning and the optimizer's state happen there: none of it may happen during a capture), captures the next
    call into a CUDA graph, and from then on copies the inputs into the graph's own and replays it.

    Every call is a real step: the capturing call replays its graph once, as capture alone runs nothing. Warm-up and
    capture share one side stream (libraries create their per-stream handles during the warm-up, not mid-capture).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], key: Callable[[], Hashable], warmup: int = 3) -> None:
        self.fn, self.key, self.warmup = fn, key, warmup
        self.stream: torch.cuda.Stream | None = None  # made at the first call: building needs no GPU
        self.graphs_captured = 0  # how many graphs were captured, over the run
        self._release(None)

    def _release(self, key: Hashable) -> None:
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.output: torch.Tensor | None = None
        self.calls, self.captured_key = 0, key

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        key = (self.key(), [(x.shape, x.dtype) for x in inputs])  # other shapes: another graph, not an error
        if key != self.captured_key:
            self._release(key)
        if self.graph is None:
            self.stream = self.stream or torch.cuda.Stream()
            self.calls += 1
            return self._eager(inputs) if self.calls <= self.warmup else self._capture(inputs)
        for static, x in zip(self.inputs, inputs, strict=True):
            static.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the static output

    def _eager(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        main = torch.cuda.current_stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            for x in inputs:  # the caller frees them on its stream; their memory waits for this one
                x.record_stream(self.stream)
            output = self.fn(*inputs)
        main.wait_stream(self.stream)
        output.record_stream(main)
        return output

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        main = torch.cuda.current_stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            self.inputs = [x.clone() for x in inputs]
        main.wait_stream(self.stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=self.stream):
            self.output = self.fn(*self.inputs)
        self.graphs_captured += 1
        self.graph.replay()
        return self.output.clone()
