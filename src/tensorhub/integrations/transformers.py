"""Hugging Face ``transformers``: ``TensorHubCallback`` logs a ``Trainer``'s metrics and saves its model as
the run's checkpoint at each of the trainer's saves. Needs ``tensorhub[transformers]``.

Example::

    from tensorhub.integrations.transformers import TensorHubCallback

    callback = TensorHubCallback(hub, run_name="bert-sst2")
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=val, callbacks=[callback])
    trainer.train()
    hub.latest_checkpoint(callback.run_id, into=BertForSequenceClassification(config))

``on_log`` writes the training rows (``loss``, ``learning_rate``, ``grad_norm``... at ``global_step``),
``on_evaluate`` one validation row per evaluation (``eval_loss`` as ``loss``; metrics of an evaluation with
``metric_key_prefix="test"`` as a testing row), ``on_save`` a checkpoint (``save_strategy`` decides when).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from tensorhub.hub import TensorHub
from tensorhub.integrations._common import RunBinding, split_metrics

#: the ``TrainingArguments`` recorded as a run's parameters (all of them would be ~150 columns)
TRAINING_ARGUMENTS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
                      "num_train_epochs", "max_steps", "weight_decay", "warmup_steps", "lr_scheduler_type",
                      "optim", "seed")


class TensorHubCallback(TrainerCallback):
    """A ``TrainerCallback`` writing to a tensorhub run (the current one, or one it starts and ends).

    Only the main process (``state.is_world_process_zero``) logs and saves. A run it starts gets the
    main :data:`TRAINING_ARGUMENTS` and ``params`` as its parameters.

    Args:
        hub: The hub. Default ``None``: ``TensorHub()`` (in a task's script, the task's store).
        run_name: The name of the run it starts when none is current. Default ``None``: ``"interactive"``.
        params: More parameters to record (e.g. the model's size). Default ``None``.
        checkpoint: Save the model as a checkpoint at each of the trainer's saves. Default ``True``.
        model_name: The checkpoints' ``model_name``. Default ``None``: ``"<run name>/checkpoint"``.
    """

    def __init__(self, hub: TensorHub | None = None, run_name: str | None = None,
                 params: Mapping[str, Any] | None = None, checkpoint: bool = True,
                 model_name: str | None = None) -> None:
        self.binding = RunBinding(hub, run_name)
        self.params = dict(params or {})
        self.checkpoint = checkpoint
        self.model_name = model_name

    @property
    def run_id(self) -> Any:
        """The id of the run it logs to (``hub.latest_checkpoint(callback.run_id)``)."""
        return self.binding.run_id

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Find or start the run, with the training arguments as parameters."""
        if state.is_world_process_zero:
            given = {name: getattr(args, name) for name in TRAINING_ARGUMENTS if hasattr(args, name)}
            self.binding.log_params({**given, **self.params})

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Training rows at ``global_step`` (evaluation metrics are written by :meth:`on_evaluate`)."""
        if state.is_world_process_zero and logs:
            training = split_metrics({k: v for k, v in logs.items() if k != "epoch"}).get("training")
            if training:  # an evaluation's on_log holds only eval_* metrics and the epoch: no training row
                if state.epoch is not None:
                    training.setdefault("epoch", float(state.epoch))
                self.binding.current().log(step=state.global_step, kind="training", **training)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> None:
        """One validation (``eval_*``) or testing (``test_*``) row at ``global_step``, with the epoch."""
        if state.is_world_process_zero and metrics:
            for kind, row in split_metrics(metrics).items():
                if kind != "training":
                    if state.epoch is not None and "epoch" not in row:
                        row["epoch"] = float(state.epoch)
                    self.binding.current().log(step=state.global_step, kind=kind, **row)

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Save ``model`` as the run's checkpoint at ``global_step`` (tagged with the epoch)."""
        if self.checkpoint and state.is_world_process_zero and model is not None:
            tags = {"epoch": float(state.epoch)} if state.epoch is not None else {}
            self.binding.checkpoint(model, state.global_step, model_name=self.model_name, **tags)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """End the run it started (else write what waits)."""
        if state.is_world_process_zero:
            self.binding.end()
