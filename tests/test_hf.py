"""vcon.hf: a real transformers Trainer drives the controller (tiny BERT, CPU, a few seconds per run)."""
import math
import shutil

import pytest
import torch

pytest.importorskip("accelerate", reason="pip install -e '.[hf]' (the Trainer needs accelerate)")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
)

from vcon.compression.lrd import LowRank  # noqa: E402
from vcon.compression.prune import Prune  # noqa: E402
from vcon.core.controller import compress_  # noqa: E402
from vcon.errors import ExportError  # noqa: E402
from vcon.hf import VconCallback  # noqa: E402
from vcon.method.blend import BlendedBranches, BlendedLinear  # noqa: E402
from vcon.schedule import Schedule  # noqa: E402

Q = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small trains as fast on one thread, and two threads spin against a busy machine's other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_beta(step: int) -> float:
    return max(1 - step / Q, 0.0)


def tokens(n: int = 256, length: int = 12) -> list[dict]:
    """A learnable rule: the label says whether token 7 occurs (other tokens are 8..99)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(8, 100, (n, length), generator=g)
    labels = torch.rand(n, generator=g) < 0.5
    ids[labels, torch.randint(0, length, (int(labels.sum()),), generator=g)] = 7
    mask = torch.ones(length, dtype=torch.long)
    return [{"input_ids": i, "attention_mask": mask, "labels": int(y)} for i, y in zip(ids, labels)]


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=2))


def trainer_for(controller, output_dir, max_steps: int, **args) -> Trainer:
    args = dict(per_device_train_batch_size=8, logging_steps=1, learning_rate=1e-3, report_to="none",
                save_strategy="no", use_cpu=True, disable_tqdm=True) | args
    trainer = Trainer(model=controller.model, args=TrainingArguments(output_dir=str(output_dir), max_steps=max_steps,
                                                                     **args), train_dataset=tokens())
    VconCallback(controller).attach(trainer)
    return trainer


def logged(trainer: Trainer, key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in trainer.state.log_history if "loss" in e}


def optimizer_params(trainer: Trainer) -> set[int]:
    real = trainer.optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps the torch one
    return {id(p) for group in real.param_groups for p in group["params"]}


class Snapshot(TrainerCallback):
    """After each step (and VconCallback's): how many parameters the model's original branches and the Trainer's
    optimizer hold; at β = 0, a copy of the compressed factors."""

    def __init__(self):
        self.originals, self.optimized = {}, {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.originals[state.global_step] = sum(".original." in n for n, _ in model.named_parameters())
        self.optimized[state.global_step] = sum(len(g["params"]) for g in optimizer.optimizer.param_groups)
        if state.global_step == Q:
            self.factors = {n: p.detach().clone() for n, p in model.named_parameters() if ".compressed." in n}


def test_low_rank_in_trainer(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    controller = compress_(bert(), LowRank(rank=4), schedule=Schedule("linear", q_steps=Q))
    model = controller.model
    trainer = trainer_for(controller, tmp_path, 12, report_to=["tensorboard"])
    snapshot = Snapshot()
    trainer.add_callback(snapshot)  # after VconCallback: sees the step it has just taken
    trainer.train()

    beta = logged(trainer, "vcon/beta")
    assert sorted(beta) == list(range(1, 13))
    for step, value in beta.items():
        assert value == pytest.approx(expected_beta(step)), (step, value)
    # β = 0 at step Q: the originals leave the model then and there, and the Trainer's (real) optimizer with them
    assert snapshot.originals[Q - 1] == 24 and snapshot.originals[Q] == 0  # weight and bias of 12 linears
    assert snapshot.optimized[Q - 1] - snapshot.optimized[Q] == 24
    assert not any(isinstance(m, BlendedBranches) and m.original is not None for m in model.modules())
    model_params = {id(p) for p in model.parameters() if p.requires_grad}
    assert optimizer_params(trainer) == model_params
    assert {id(p) for p in trainer.optimizer.optimizer.state} <= model_params
    # the compressed model goes on training after β = 0
    losses = logged(trainer, "loss")
    assert all(math.isfinite(losses[s]) for s in range(Q + 1, 13))
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n], v) for n, v in snapshot.factors.items())
    assert controller.finished and float(controller.beta) == 0
    # TensorBoard got β too (the Trainer's reporter prefixes training logs with train/)
    events = EventAccumulator(str(next(tmp_path.glob("runs/*")))).Reload()
    written = {e.step: e.value for e in events.Scalars("train/vcon/beta")}
    assert written == pytest.approx({s: expected_beta(s) for s in range(1, 13)})
    # finalized, the factors are not something BertForSequenceClassification can load: the save is refused
    controller.finalize()
    with pytest.raises(ExportError, match=r"BertForSequenceClassification.save_pretrained cannot save .*vcon\.export"):
        trainer.save_model(str(tmp_path / "final"))
    assert not list((tmp_path / "final").glob("*.safetensors"))


def test_prune_in_trainer(tmp_path):
    controller = compress_(bert(), Prune(ratio=0.5), schedule=Schedule("linear", q_steps=Q))
    trainer = trainer_for(controller, tmp_path, 8)
    trainer.train()

    beta = logged(trainer, "vcon/beta")
    assert beta[8] == 0 and beta[3] == pytest.approx(0.5)
    assert controller.figures()["zero_fraction"] == pytest.approx(0.5, abs=1e-3)
    layers = [m for m in controller.model.modules() if isinstance(m, BlendedLinear)]
    assert len(layers) == 12  # 6 linears in each of the 2 blocks
    for layer in layers:  # what the model computes with at β = 0: the pruned weights
        assert float((layer.effective_weight() == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert optimizer_params(trainer) == {id(p) for p in controller.model.parameters()}  # pruning drops nothing
    # finalize, then the Trainer's own save: the pruned weights, which the model's class loads back as they are
    x = torch.stack([t["input_ids"] for t in tokens(4)])
    with torch.no_grad():
        beta_zero = controller.model.eval()(input_ids=x).logits
    controller.finalize()
    trainer.save_model(str(tmp_path / "final"))
    loaded = BertForSequenceClassification.from_pretrained(tmp_path / "final").eval()
    for name in controller.names:
        assert float((loaded.get_submodule(name).weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3), name
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, beta_zero, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """10 steps (Q = 6) of low rank with a checkpoint every 4: the reference and its checkpoints 4 and 8."""
    out = tmp_path_factory.mktemp("uninterrupted")
    controller = compress_(bert(), LowRank(rank=4), schedule=Schedule("linear", q_steps=Q))
    trainer = trainer_for(controller, out, 10, save_strategy="steps", save_steps=4)
    trainer.train()
    return out, logged(trainer, "vcon/beta"), logged(trainer, "loss")


def test_resume_mid_transition(tmp_path, uninterrupted):
    reference, beta, loss = uninterrupted
    shutil.copytree(reference / "checkpoint-4", tmp_path / "checkpoint-4")  # as if stopped after step 4 (β = 1/3)
    controller = compress_(bert(), LowRank(rank=4), schedule=Schedule("linear", q_steps=Q))
    trainer = trainer_for(controller, tmp_path, 10)
    trainer.train(resume_from_checkpoint=True)

    assert controller.steps == 10
    assert logged(trainer, "vcon/beta") == pytest.approx(beta)  # steps 1-4 come from the checkpoint's history
    resumed = logged(trainer, "loss")  # the same β at each step, so the same losses as without the interruption
    assert {s: resumed[s] for s in range(5, 11)} == pytest.approx({s: loss[s] for s in range(5, 11)}, rel=1e-4)


def test_resume_after_originals_dropped(tmp_path, uninterrupted):
    """Not supported as such (vcon/hf.py): the Trainer stops loading its optimizer state; go_to(step) first works."""
    reference, beta, loss = uninterrupted
    controller = compress_(bert(), LowRank(rank=4), schedule=Schedule("linear", q_steps=Q))
    with pytest.raises(ValueError, match="parameter group"):
        trainer_for(controller, tmp_path, 10).train(resume_from_checkpoint=str(reference / "checkpoint-8"))

    controller = compress_(bert(), LowRank(rank=4), schedule=Schedule("linear", q_steps=Q))
    controller.go_to(8)
    trainer = trainer_for(controller, tmp_path, 10)
    trainer.train(resume_from_checkpoint=str(reference / "checkpoint-8"))
    resumed = logged(trainer, "loss")
    assert {s: resumed[s] for s in (9, 10)} == pytest.approx({s: loss[s] for s in (9, 10)}, rel=1e-4)


def test_clear_errors(tmp_path):
    controller = compress_(bert(), LowRank(rank=4), schedule=Schedule("linear", q_steps=Q))
    # given as Trainer(callbacks=[...]), β would miss the reporters: refused
    trainer = Trainer(model=controller.model, args=TrainingArguments(str(tmp_path), max_steps=1, use_cpu=True,
                                                                     report_to="none"),
                      train_dataset=tokens(), callbacks=[VconCallback(controller)])
    with pytest.raises(RuntimeError, match="attach"):
        trainer.train()
    # once the originals are gone, the controller cannot go back before Q
    controller.go_to(Q)
    callback = VconCallback(controller)
    callback.attached = True
    with pytest.raises(ValueError, match="cannot go back"):
        callback.on_train_begin(trainer.args, TrainerState(global_step=2), None)
    # a finalized controller has nothing left to drive: its layers are plain
    controller.finalize()
    with pytest.raises(ValueError, match="controller is finalized"):
        callback.on_train_begin(trainer.args, TrainerState(global_step=Q), None)


def test_a_distill_trainer_is_taught_by_the_dense_model_under_gradient_accumulation(tmp_path):
    """At β = 1 the student is the dense model (no dropout here), so the KL term is 0 and the first logged loss is
    (1 − α) of the task loss over the first 8 examples: two micro-batches of 4 here, one batch of 8 for the plain
    Trainer (the same examples: one seeded order). The Trainer divides the per-batch mean over the accumulation
    steps. (A plain Trainer's BertForSequenceClassification at 2 accumulation steps logs twice its mean loss in
    transformers 5.24: it takes the model for one that normalizes its loss by ``num_items_in_batch``.)"""
    from transformers import BertConfig, BertForSequenceClassification

    from vcon.distill import Distill, Teacher
    from vcon.hf import DistillTrainer

    def losses(distill: bool) -> list[float]:
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=2, intermediate_size=64, num_labels=2,
                                                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        teacher = Teacher(model, Distill(alpha=0.5, temperature=2.0))
        before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
        controller = compress_(model, Prune(ratio=0.5), schedule=Schedule("linear", q_steps=Q))
        micro = 4 if distill else 8
        args = TrainingArguments(output_dir=str(tmp_path / str(distill)), max_steps=3, per_device_train_batch_size=micro,
                                 gradient_accumulation_steps=8 // micro, logging_steps=1, learning_rate=1e-3, report_to="none",
                                 save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
        trainer = (DistillTrainer(teacher, model=model, args=args, train_dataset=tokens()) if distill else
                   Trainer(model=model, args=args, train_dataset=tokens()))
        VconCallback(controller).attach(trainer)
        trainer.train()
        assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())  # never moved
        return [e["loss"] for e in trainer.state.log_history if "loss" in e]

    taught, plain = losses(True), losses(False)
    assert len(taught) == len(plain) == 3 and taught[0] == pytest.approx(0.5 * plain[0], rel=1e-4)
