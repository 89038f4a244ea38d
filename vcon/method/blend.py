"""The blended modules: ``blend_(model, compression, names, method=...)`` puts every named block beside its
compressed form (``vcon.compress_`` is the verb users call; it chooses the names and drives β).

With VCON each targeted module computes ``β·f(x) + (1−β)·g(x)``; with gradual compression it computes ``g`` at
strength ``1 − β`` (``vcon/method/gradual.py``). One β is shared by the modules of one compression (``Beta``; a
recipe's groups have one each), which the controller moves from 1 to 0 along the schedule.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vcon.layers import kind_of
from vcon.method.base import Method
from vcon.method.vcon import VCON


class WeightTransform(Protocol):
    """What a blended linear layer asks of its compression (``vcon.compression.WeightCompression``): ``C(W)`` of
    one weight, or of many at once. The compressions build on this module, not the other way round."""

    def compress(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor: ...

    def compress_all(self, weights: list[torch.Tensor], strength: float = 1.0) -> list[torch.Tensor]: ...


class Blending(Protocol):
    """What ``blend_`` asks of a compression (every ``vcon.compression.Compression``): whether it compresses at all,
    and the modules that stand for a layer under VCON (``blend``) and gradual compression (``grow_in``)."""

    dense: bool

    def blend(self, linear: nn.Linear, beta: "Beta") -> nn.Module: ...

    def grow_in(self, linear: nn.Linear, beta: "Beta") -> nn.Module: ...


class Beta:
    """The current β: 1 is the original network, 0 the compressed one. Shared by every blended module.

    Blended modules read ``tensor`` (a 0-dim tensor on the model's device, updated in place) and ``phase``, never
    the Python float ``value``: under ``torch.compile`` a float read in ``forward`` would be baked into the graph and
    force a recompilation at every step, while a tensor is a graph input and ``phase`` changes only twice a run.
    """

    def __init__(self, value: float = 1.0, device: torch.device | str | None = None) -> None:
        self.tensor = torch.ones((), device=device)
        self.value = value

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        self._value = float(value)
        self.phase = "original" if value >= 1 else "compressed" if value <= 0 else "blend"
        self.tensor.fill_(self._value)  # in place: compiled graphs keep reading the same tensor

    def __float__(self) -> float:
        return self._value

    @contextlib.contextmanager
    def fixed(self, value: float) -> Iterator[None]:
        """Temporarily evaluate at another β (e.g. the fully compressed model during the transition)."""
        saved, self.value = self.value, value
        try:
            yield
        finally:
            self.value = saved


class Betas:
    """The β of a recipe whose groups move on their own schedules, read as one: ``value`` is the largest (0 once
    every group is fully compressed), ``phase`` the groups' phases together (a CUDA graph
    is captured again when any changes), ``fixed`` sets them all (evaluating the fully compressed model)."""

    def __init__(self, betas: list[Beta]) -> None:
        self.betas = betas

    @property
    def value(self) -> float:
        return max(b.value for b in self.betas)

    @property
    def phase(self) -> tuple[str, ...]:
        return tuple(b.phase for b in self.betas)

    def __float__(self) -> float:
        return self.value

    @contextlib.contextmanager
    def fixed(self, value: float) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for b in self.betas:
                stack.enter_context(b.fixed(value))
            yield


class _StraightThrough(torch.autograd.Function):
    """Forward: ``C(W)``, computed beforehand. Backward: the gradient goes unchanged to the latent W
    (straight-through estimator)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, compressed: torch.Tensor):
        return compressed

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class BlendedLinear(nn.Module):
    """A linear layer whose compressed form is the same layer with weights ``C(W)``: VCON blends the weights,
    ``W_eff = β·W + (1−β)·C(W)``, one matmul, forward and backward at ``W_eff``; the gradient reaches the latent W
    as the reference's does (``β·g + (1−β)·g`` through the straight-through ``C``). Gradual compression runs
    ``W_eff = C_s(W)``, the compression at strength ``s = 1 − β``, straight-through alike. It keeps the original
    ``weight``/``bias`` parameters, so state-dict keys are those of the dense model."""

    def __init__(self, linear: nn.Linear, compression: WeightTransform, beta: Beta, gradual: bool = False) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.kind = kind_of(linear)  # what it becomes again once finalized (vcon.layers)
        self.compression = compression
        self.beta = beta
        self.gradual = gradual
        self.precomputed: torch.Tensor | None = None  # C(W), set by blend_'s hooks around each forward of the model

    def effective_weight(self) -> torch.Tensor:
        if self.beta.phase == "original":
            return self.weight
        compressed = self.precomputed
        if compressed is None:  # called outside the model's forward
            with torch.no_grad():
                compressed = self.compression.compress(self.weight, strength(self.beta, self.gradual))
        compressed = _StraightThrough.apply(self.weight, compressed)
        if self.gradual or self.beta.phase == "compressed":
            return compressed
        return torch.lerp(compressed, self.weight, self.beta.tensor)

    @property
    def original_shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x), g(x)): the original and the fully compressed layer on the same input."""
        return F.linear(x, self.weight, self.bias), F.linear(x, self.compression.compress(self.weight), self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, compression={self.compression}"

    @torch.no_grad()
    def finalized(self) -> nn.Linear:
        """The plain layer this one is at β = 0: an ``nn.Linear`` whose weight holds ``C(W)`` (written into the
        latent weight's parameter, which it keeps), so the model's own transformers class loads it."""
        self.weight.copy_(self.compression.compress(self.weight))
        return self.kind.plain(self.weight, self.bias)


class BlendedBranches(nn.Module):
    """A module whose compressed form has another structure: both branches run and their outputs are blended.
    Once β reaches 0, ``drop_original`` removes f, so it is neither computed nor trained nor kept.

    When both branches are linear maps (an ``nn.Linear`` and a compressed module with ``dense_weight()`` and
    ``bias``, like the low-rank factors), blending their weights is the same as blending their outputs, and costs one
    full-size matmul instead of the original's plus the factors' two: VCON then costs what the dense layer does."""

    def __init__(self, original: nn.Module, compressed: nn.Module, beta: Beta) -> None:
        super().__init__()
        self.original = original
        self.compressed = compressed
        self.beta = beta
        self.original_shape = tuple(original.weight.shape)  # kept for the figures once f is gone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.original is None or self.beta.phase == "compressed":
            return self.compressed(x)
        if self.beta.phase == "original":
            return self.original(x)
        f, g, beta = self.original, self.compressed, self.beta.tensor
        if isinstance(f, nn.Linear) and hasattr(g, "dense_weight"):
            weight = torch.lerp(g.dense_weight().to(f.weight.dtype), f.weight, beta)  # fp32 even under autocast
            bias = None if f.bias is None else torch.lerp(g.bias.to(f.bias.dtype), f.bias, beta)
            return F.linear(x, weight, bias)
        compressed, original = g(x), f(x)  # bf16 under autocast, whatever x is
        return torch.lerp(compressed, original, beta.to(compressed.dtype))

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.original is None else (self.original(x), self.compressed(x))

    def drop_original(self) -> list[nn.Parameter]:
        dropped = [] if self.original is None else list(self.original.parameters())
        self.original = None
        return dropped

    def finalized(self) -> nn.Module:
        """The plain module this one is at β = 0: the compressed branch alone (low rank: ``LowRankLinear``)."""
        self.drop_original()
        return self.compressed


def strength(beta: Beta, gradual: bool) -> float:
    """How much of the compression a layer applies: all of it for VCON (whose blend is β's business), ``1 − β``
    for gradual compression."""
    return 1.0 - beta.value if gradual else 1.0


def blend_(model: nn.Module, compression: Blending, names: list[str], beta: Beta | None = None,
           method: Method = VCON) -> Beta:
    """Replace each module in ``names`` (chosen by ``vcon.core.targets``) by the module ``method`` puts in its place
    (``Method.wrap``: blended with its compressed form, or the compression growing in), all driven by one β, which
    it returns. The dense baseline (``compression=none``) wraps nothing. All are built before any goes in: a
    compression that refuses the method leaves the model as it was."""
    if beta is None:
        first = next(iter(model.parameters()), None)
        beta = Beta(device=first.device if first is not None else None)
    if compression.dense:
        return beta
    blended = {name: method.wrap(compression, model.get_submodule(name), beta) for name in names}
    for name, module in blended.items():
        model.set_submodule(name, module)
    Precompute(model, list(blended.values()), compression, beta, method.strength)
    return beta


_HOOKS = "_vcon_precompute"  # where a blended model keeps its Precompute objects


class Precompute:
    """blend_'s hooks around each forward of a blended model. Before it, compute the weight each blended layer runs:
    ``C(W)`` of all weight compressions at once (``compress_all``: one top-k for all same-shaped layers, not one per
    layer), the projections of gradual low rank; after it, let them go, so that a layer called on its own later
    computes its own from its current weight. Out here, not in the layers, these stay outside ``torch.compile``'d
    blocks, and a strength that changes every step (gradual) recompiles nothing.

    The hooks are this object's methods, and the model keeps the object (``unhook`` takes it off with its hooks):
    a deep copy of the model copies it along with the copy's own layers, so a copy never computes the weights of the
    model it was copied from."""

    def __init__(self, model: nn.Module, layers: list[nn.Module], compression: WeightTransform, beta: Beta,
                 strength: Callable[[Beta], float]) -> None:
        self.layers, self.compression, self.beta, self.strength = layers, compression, beta, strength
        self.linears = [layer for layer in layers if isinstance(layer, BlendedLinear)]
        self.own = [layer for layer in layers if hasattr(layer, "prepare")]  # e.g. gradual low rank's projections
        self.handles = []
        if not (self.linears or self.own):  # e.g. VCON's low rank: its factors compute their own weight
            return
        self.handles = [model.register_forward_pre_hook(self.before), model.register_forward_hook(self.after)]
        model.__dict__.setdefault(_HOOKS, []).append(self)  # a plain attribute: not a submodule, not in a state dict

    def before(self, module: nn.Module, args: tuple) -> None:
        if self.beta.phase == "original":
            return
        s = self.strength(self.beta)
        with torch.no_grad():
            if self.linears:
                weights = [layer.weight for layer in self.linears]
                for layer, compressed in zip(self.linears, self.compression.compress_all(weights, s)):
                    layer.precomputed = compressed
        for layer in self.own:  # in the autograd graph where the layer says so (gradual low rank's projection)
            layer.prepare(s)

    def after(self, module: nn.Module, args: tuple, output: object) -> None:
        for layer in self.layers:
            layer.precomputed = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def unhook(model: nn.Module) -> None:
    """Take blend_'s hooks off ``model`` (or off a deep copy of it, which holds its own)."""
    for hooks in model.__dict__.pop(_HOOKS, []):
        hooks.remove()


def finalize_(model: nn.Module, names: list[str]) -> None:
    """Bake the compression into ``model`` at β = 0: each blended module in ``names`` becomes the plain module it
    computes (``finalized``: an ``nn.Linear`` holding ``C(W)``, or low rank's ``LowRankLinear``), and blend_'s
    hooks come off. What ``Controller.finalize`` leaves, and what ``vcon.export`` packs."""
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, (BlendedLinear, BlendedBranches)):
            model.set_submodule(name, module.finalized())
    unhook(model)


def original_shape(module: nn.Module) -> torch.Size:
    """(out, in) of the layer that ``module`` compresses: blended, finalized or left dense (``vcon.layers``)."""
    if isinstance(module, (BlendedLinear, BlendedBranches)):
        return torch.Size(module.original_shape)
    kind = kind_of(module)
    if kind is not None:
        return kind.shape(module)
    return torch.Size([module.out_features, module.in_features])  # a finalized runtime (low rank's) says its own


def drop_originals(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """At β = 0: remove every original branch from the model (and its parameters and state from ``optimizer``).
    Returns how many parameters were dropped."""
    dropped = [p for m in model.modules() if isinstance(m, BlendedBranches) for p in m.drop_original()]
    if optimizer is not None and dropped:
        gone = {id(p) for p in dropped}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in gone]
        for p in dropped:
            optimizer.state.pop(p, None)
    return len(dropped)


@torch.no_grad()
def block_gap(model: nn.Module, run: Callable[[], object]) -> float | None:
    """How far apart original and compressed blocks are, as the transition goes: during ``run()`` (a forward pass on
    a fixed probe batch), each blended module's input x gives ``|f(x) - g(x)| / |f(x)|``; returns their mean.
    None once the originals are gone (low rank after β = 0) or when nothing is blended."""
    gaps: list[float] = []

    def measure(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        pair = module.branches(inputs[0])
        if pair is not None:
            f, g = (t.float() for t in pair)
            gaps.append(float((f - g).norm() / f.norm().clamp(min=1e-12)))

    hooks = [m.register_forward_pre_hook(measure) for m in model.modules()
             if isinstance(m, (BlendedLinear, BlendedBranches))]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return sum(gaps) / len(gaps) if gaps else None
