"""VCON inside a Hugging Face ``Trainer``: ``VconCallback`` calls ``controller.step`` after every optimizer step and
puts β into the Trainer's logs as ``vcon/beta`` (``log_history``, the progress bar, TensorBoard, W&B...)::

    from vcon.hf import VconCallback
    controller = compress_(model, LowRank(rank=16), schedule=Schedule("linear", q_steps=500))
    trainer = Trainer(model=model, args=TrainingArguments("out", max_steps=2000), train_dataset=train)
    VconCallback(controller).attach(trainer)  # not Trainer(callbacks=[...]): attach() says why
    trainer.train()                           # or train(resume_from_checkpoint=True): β goes on from that step
    model = controller.finalize()             # β = 0 for good, the compression baked into plain layers
    trainer.save_model("final")               # prune, quant: C(W) in each nn.Linear (low rank: vcon.export)

The dense model as teacher: ``DistillTrainer``, a ``Trainer`` whose ``compute_loss`` is the teacher's::

    teacher = Teacher(model, Distill(alpha=0.5, temperature=2.0))   # vcon.distill; before compress_
    controller = compress_(model, ...)
    trainer = DistillTrainer(teacher, model=model, args=..., train_dataset=train)

Needs ``accelerate`` (``pip install vcon[hf]``), as the Trainer itself does. Resuming puts the controller at the
checkpoint's ``global_step``, so the schedule must be the one the checkpoint was trained with.

Not supported:

* resuming a low-rank checkpoint saved at or after β = 0 (step ≥ Q): its original branches are gone, the fresh model
  still has them, and the Trainer stops before any callback runs, while loading its optimizer state ("loaded state
  dict contains a parameter group that doesn't match the size of optimizer's group"). Call
  ``controller.go_to(step)`` with the checkpoint's step before ``trainer.train(resume_from_checkpoint=...)`` for
  such a checkpoint: the model then matches it.
* training with a finalized controller (``controller.finalize()`` bakes the compression into plain layers, which
  would train on without it): ``ValueError`` at the start of training.
* going back to a step before Q once a low-rank controller has dropped its originals (``train()`` again from
  scratch with the same controller, or resuming an earlier checkpoint): ``ValueError`` at the start of training.
* low rank with several processes (DDP, FSDP, DeepSpeed): their wrappers keep the dropped parameters and the
  Trainer never rebuilds them (``vcon.train.loop`` does): ``ValueError`` at the start of training. Pruning and
  quantization keep every parameter and are not concerned.
"""
from __future__ import annotations

from transformers import Trainer, TrainerCallback

from vcon.core.controller import Controller
from vcon.distill import Teacher
from vcon.method.blend import BlendedBranches


class VconCallback(TrainerCallback):
    """Drives ``controller`` (from ``vcon.compress_``) inside ``Trainer.train()``."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.attached = False

    def attach(self, trainer: Trainer) -> VconCallback:
        """Register with ``trainer`` and log β with every training loss.

        A callback cannot do the logging itself (transformers 5, ``Trainer.log``): it appends a copy of ``logs`` to
        ``state.log_history`` *before* calling ``on_log``, and the reporters (TensorBoard, W&B, ...) are callbacks
        too, placed before any user callback, so by the time our ``on_log`` could add β they have written the logs
        already (tried: patching log_history[-1] too, β still never reaches TensorBoard). ``Trainer.log`` is the
        hook transformers documents for adding to the logs; wrapping this instance's puts β into ``logs`` before
        the history and every callback see them."""
        log = trainer.log

        def log_with_beta(logs: dict[str, float], *args, **kwargs) -> None:
            if "loss" in logs:  # the training logs; at step t it is schedule.beta(t), the β of the next step
                logs.update(self.controller.scalars())  # β, and a gradual run's strength
            log(logs, *args, **kwargs)

        trainer.log = log_with_beta
        trainer.add_callback(self)
        self.attached = True
        return self

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if not self.attached:
            raise RuntimeError("VconCallback was given to the Trainer directly; use VconCallback(controller)"
                               ".attach(trainer) so that β reaches the Trainer's logs")
        if self.controller.finalized:
            raise ValueError("vcon.hf: this controller is finalized (its model holds plain layers with the compression "
                             "baked in, which would train on without it); build a fresh model and controller")
        branches = [m for m in self.controller.model.modules() if isinstance(m, BlendedBranches)]
        if branches and (args.world_size > 1 or args.deepspeed or args.fsdp):
            raise ValueError("vcon.hf: low rank under DDP/FSDP/DeepSpeed is not supported (their wrappers keep the "
                             "original branches dropped at β = 0); use vcon.train.loop or a single process")
        # Here the Trainer has loaded the checkpoint's model and optimizer (when resuming): move β to its step.
        step, q = state.global_step, self.controller.q_steps
        if step != self.controller.steps:
            if step < q and any(m.original is None for m in branches):
                raise ValueError(f"this controller has dropped its original branches (β = 0 at step "
                                 f"{self.controller.steps}); it cannot go back to step {step} < Q = {q}: build a "
                                 "fresh model and controller")
            self.controller.go_to(step, _unwrap(optimizer))

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        # once per optimizer step (micro-batches of gradient accumulation get on_substep_end), after global_step
        # += 1 and before that step's logging and checkpoint: controller.steps == global_step in both
        self.controller.step(_unwrap(optimizer))


def _unwrap(optimizer):
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer``: its ``param_groups`` and ``state`` are the
    lists the parameters must leave (the wrapper forwards them today; going to the real one does not rely on it)."""
    return getattr(optimizer, "optimizer", optimizer)


class DistillTrainer(Trainer):
    """A ``Trainer`` taught by ``teacher`` (``vcon.distill.Teacher``, made from the model before ``compress_``): each
    batch's loss is ``teacher.loss`` of the model against the batch's ``labels``, evaluation's included. The loss is
    a per-batch mean, so the Trainer divides it over gradient accumulation itself."""

    loss_is_scaled_for_ga = False

    def __init__(self, teacher: Teacher, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        teacher.model.to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        loss, outputs = self.teacher.forward(model, inputs, labels)
        return (loss, outputs) if return_outputs else loss
