"""train.cuda_graph: what makes a replayed CUDA graph the same step as an eager call.

On the CPU: a replay repeats the captured kernels with the captured arguments, so a step may be captured only if every
call dispatches the same operations with the same non-tensor arguments (all that changes between steps lives in
tensors) and never reads a device value on the host. The step is run under a dispatch log to check exactly that, and
the learning rate and the graph's key are checked. On a GPU (``bench/gpu_checks.sh graph`` runs this file there):
captured steps against eager ones.
"""
import pytest
import torch
from conftest import FASHION_MNIST_ROOT, QUICK, make_config, requires_fashion_mnist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from vcon import data
from vcon.app import identity, job
from vcon.compression import from_config
from vcon.errors import ConfigError
from vcon.method.blend import drop_originals
from vcon.schedule import Schedule
from vcon.train import loop as train
from vcon.train import lr_schedule
from vcon.train import step as train_step

# operations that read a device value on the host, or whose output shape depends on the data
HOST_READS = ("_local_scalar_dense", "item", "nonzero", "masked_select", "unique")


class DispatchLog(TorchDispatchMode):
    """Every operation dispatched, with its non-tensor arguments and its tensors' shapes and dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if not name.startswith("profiler."):  # record_function markers, one object per call
            described = tree_map(lambda a: (tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a,
                                 (args, kwargs))
            self.ops.append((name, repr(described)))
        return func(*args, **kwargs)


def build(*overrides: str, device: str = "cpu", batch: int = 16):
    cfg = make_config("model=vit-micro-scratch", "train=paper", f"train.batch_size={batch}", "train.cuda_graph=true",
                      "tracking.wandb.mode=disabled", *overrides)
    torch.manual_seed(0)
    controller, pipeline = train.build_model(cfg, from_config(cfg.compression), 10, torch.device(device),
                                             Schedule("linear", 100))  # β is set by hand below
    step = train_step.build_step(controller.model, pipeline, cfg.train, 10, 100, torch.device(device),
                                 beta=controller.beta)
    return cfg, controller.model, controller.beta, pipeline, step


def logged_step(step, pipeline, batch: int, mix_rng: torch.Generator) -> list[tuple[str, str]]:
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch,))
    micro = batch // step.grad_accum
    mixes = [t for _ in range(step.grad_accum) for t in pipeline.draw_mix(micro, mix_rng)]
    with DispatchLog() as log:
        step.train_on(images, labels, *mixes)
    step.lr_schedule.step()
    return log.ops


@pytest.mark.parametrize("overrides, betas", [
    (("compression=prune",), (0.8, 0.6, 0.3)),  # the weight blend, masks recomputed every step
    (("compression=quant",), (0.8, 0.6, 0.3)),
    (("compression=lrd", "compression.rank=4"), (0.8, 0.6, 0.3)),  # both branches
    (("compression=lrd", "compression.rank=4"), (0.0, 0.0, 0.0)),  # originals dropped
    (("compression=prune", "train.grad_accum=2", "train.grad_clip=1.0"), (0.9, 0.5, 0.2)),
    (("compression=none",), (1.0, 1.0, 1.0)),
])
def test_every_step_dispatches_the_same_operations_and_reads_nothing_back(overrides, betas):
    """Steps at other β, learning rates, MixUp draws and RandAugment draws: the same operations with the same
    non-tensor arguments (a value baked into a graph would show here as an argument that changes)."""
    _, net, beta, pipeline, step = build(*overrides)
    mix_rng = torch.Generator().manual_seed(0)
    logs, lrs = [], []
    for value in betas:
        beta.value = value
        if value == 0:
            drop_originals(net, step.optimizer)
        lrs.append(float(step.optimizer.param_groups[0]["lr"]))
        logs.append(logged_step(step, pipeline, 16, mix_rng))
    assert len(set(lrs)) == len(lrs)  # the learning rate did change (warm-up)
    first_step, second, third = logs  # the first step also creates the optimizer's state
    assert len(second) > 500 and second == third
    assert not [op for op, _ in second if any(read in op for read in HOST_READS)]


@pytest.mark.filterwarnings("ignore:Detected call of")  # no training here
def test_the_learning_rate_is_one_device_tensor_filled_in_place_even_after_a_resume():
    cfg, net, beta, pipeline, step = build("compression=prune")
    lr = step.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and step.optimizer.param_groups[0]["capturable"]
    factor = lr_schedule.Warmup(round(cfg.train.warmup_epochs * 10), 100,
                                      cfg.train.warmup_start_lr / cfg.train.lr, cfg.train.min_lr / cfg.train.lr)
    for i in range(1, 4):
        step.lr_schedule.step()
        assert step.optimizer.param_groups[0]["lr"] is lr
        assert float(lr) == pytest.approx(cfg.train.lr * factor(i))
    saved = step.optimizer.state_dict()
    eager = train_step.build_step(net, pipeline, make_config("model=vit-micro-scratch", "train=paper").train, 10,
                                  100, torch.device("cpu"), beta=beta)  # a run checkpointed without graphs: a float lr
    assert isinstance(eager.optimizer.param_groups[0]["lr"], float)
    for state in (saved, eager.optimizer.state_dict()):
        _, _, _, _, resumed = build("compression=prune")
        resumed.optimizer.load_state_dict(state)
        loaded = resumed.optimizer.param_groups[0]["lr"]
        assert isinstance(loaded, torch.Tensor) and loaded.device == next(net.parameters()).device
        assert float(loaded) == pytest.approx(float(state["param_groups"][0]["lr"]))


def test_the_graph_is_captured_again_exactly_when_the_step_changes_shape():
    _, net, beta, _, step = build("compression=lrd", "compression.rank=4")
    keys = {}
    for value in (1.0, 0.7, 0.2, 0.0):
        beta.value = value
        keys[value] = step.captured.key()
    assert keys[0.7] == keys[0.2] and len({keys[1.0], keys[0.7], keys[0.0]}) == 3
    drop_originals(net, step.optimizer)
    assert step.captured.key() != keys[0.0]  # fewer parameters to train


def test_bad_values_are_refused_before_anything_loads():
    with pytest.raises(ConfigError, match=r"train.cuda_graph.*'sometimes'.*auto, true or false"):
        job.check(make_config(*QUICK, "train.cuda_graph=sometimes"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train.cuda_graph=true is not allowed without a CUDA device.*auto or "
                                              r"false"):
            job.check(make_config(*QUICK, "train.cuda_graph=true"))
    with pytest.raises(ConfigError, match=r"train.cuda_graph=true is not allowed without a CUDA device"):
        job.check(make_config(*QUICK, "train.cuda_graph=true", "device=cpu"))


def test_a_run_with_graphs_is_the_same_run():
    plain = make_config(*QUICK)
    assert identity.run_id(make_config(*QUICK, "train.cuda_graph=auto")) == identity.run_id(plain)


# On a GPU --------------------------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def losses(steps: int, captured: bool, *overrides: str):
    """Loss per step on real Fashion-MNIST batches over a transition (β from 1 to 0 in the first half, then the
    originals dropped), eager or captured; and the step and model after it."""
    _, net, beta, pipeline, step = build(f"train.cuda_graph={str(captured).lower()}", *overrides, device="cuda",
                                         batch=64)
    split = data.load(make_config(*QUICK, f"data.train_size={64 * steps}", f"data.root={FASHION_MNIST_ROOT}").data
                      ).train.to("cuda")
    mix_rng = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # MixUp's λ
    out = []
    for i in range(steps):
        beta.value = max(0.0, 1 - i / (steps // 2))
        if beta.value == 0:
            drop_originals(net, step.optimizer)
        batch = slice(64 * i, 64 * (i + 1))
        out.append(step(split.inputs[batch], split.labels[batch], mix_rng))
    return torch.stack(out).cpu(), step, net


@cuda
@requires_fashion_mnist
@pytest.mark.parametrize("compression", [("compression=prune",), ("compression=lrd", "compression.rank=4"),
                                         ("compression=quant",)])
def test_captured_steps_train_as_eager_ones_do(compression):
    """fp32, RandAugment off (its device draws differ between eager and graph streams), MixUp on: the same losses
    and the same weights, through β = 1, the blend and β = 0 with the originals dropped."""
    overrides = ("train.precision=fp32", "train.compile=false", "train.augment.randaugment.enabled=false",
                 *compression)
    eager, _, eager_net = losses(24, False, *overrides)
    replayed, step, net = losses(24, True, *overrides)
    assert step.captured.graphs_captured >= 2  # the blend, then β = 0 (β = 1 lasts one step: never captured)
    torch.testing.assert_close(replayed, eager, atol=2e-4, rtol=1e-3)
    for (name, a), b in zip(net.state_dict().items(), eager_net.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3, msg=name)


@cuda
@requires_fashion_mnist
def test_captured_compiled_bf16_steps_with_randaugment_learn():
    """What a CUDA run does: compiled blocks and RandAugment, bf16, captured. Losses finite and falling."""
    replayed, step, _ = losses(40, True, "compression=prune", "train.compile=true", "train.precision=bf16",
                               "train.lr=1e-3")
    assert step.captured.graphs_captured >= 2 and torch.isfinite(replayed).all()
    assert replayed[-8:].mean() < replayed[:8].mean()
