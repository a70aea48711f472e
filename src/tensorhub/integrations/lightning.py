"""PyTorch Lightning: ``TensorHubLogger`` (metrics and hyper-parameters to a run) and ``TensorHubCheckpoint``
(the module saved as the run's checkpoint every few epochs). Needs ``tensorhub[lightning]``.

Example::

    from tensorhub.integrations.lightning import TensorHubCheckpoint, TensorHubLogger

    logger = TensorHubLogger(hub, run_name="mnist")        # the current run, or a new one named so
    trainer = lightning.Trainer(logger=logger, callbacks=[TensorHubCheckpoint()], max_epochs=3)
    trainer.fit(model, train_loader, val_loader)
    hub.latest_checkpoint(logger.version, into=MyModule())  # the last epoch's weights

Metrics logged with ``self.log("val_loss", ...)`` become validation rows (``loss``), ``test_*`` testing
rows, others training rows (see :mod:`tensorhub.integrations`), at Lightning's ``global_step``.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from tensorhub.hub import TensorHub
from tensorhub.integrations._common import RunBinding, plain_number
from tensorhub.models import internal_fields


def _rank() -> int:
    """This process's global rank (Lightning sets it on ``rank_zero_only`` when the trainer starts)."""
    return int(getattr(rank_zero_only, "rank", 0))


class TensorHubLogger(Logger):
    """A Lightning ``Logger`` writing to a tensorhub run (the current one, or one it starts and ends).

    ``log_hyperparams`` (Lightning passes the module's ``save_hyperparameters()``) sets the parameters
    of a run it starts, or adds them to the current interactive run's; a task keeps its own.
    Only the global-rank-0 process logs.

    Args:
        hub: The hub. Default ``None``: ``TensorHub()`` (in a task's script, the task's store).
        run_name: The name of the run it starts when none is current. Default ``None``: ``"interactive"``.
    """

    def __init__(self, hub: TensorHub | None = None, run_name: str | None = None) -> None:
        super().__init__()
        self.binding = RunBinding(hub, run_name)

    @property
    def name(self) -> str | None:
        """The run's name."""
        if _rank() != 0:
            return self.binding.run_name
        return (self.binding.run or self.binding.current()).name

    @property
    def version(self) -> str | None:
        """The run's id (hex), for ``hub.latest_checkpoint(logger.version)`` or ``find_runs(_id=...)``."""
        return str(self.binding.run_id) if _rank() == 0 else None

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Record ``params`` as the run's parameters (see the class docstring)."""
        self.binding.log_params(vars(params) if isinstance(params, Namespace) else dict(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log ``metrics`` at ``step`` as training, validation and testing rows (by name)."""
        self.binding.log(metrics, step, context=("epoch",))

    @rank_zero_only
    def save(self) -> None:
        """Write the buffered rows now."""
        if self.binding.run is not None:
            self.binding.run.flush(quiet=True)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Training ended: end the run this logger started (``failed`` unless ``status`` is success), else
        write what waits."""
        self.binding.end(None if status in ("success", "finished") else RuntimeError(f"lightning: {status}"))


class TensorHubCheckpoint(Callback):
    """Save the ``LightningModule`` as its run's checkpoint (``run.checkpoint``) every ``every_n_epochs``
    epochs, at the end of the training epoch (after its validation), with step ``global_step``.

    The run is the :class:`TensorHubLogger`'s when the trainer has one, else the current run (or one
    started, as the logger does). The record's tags are the epoch and the trainer's scalar
    ``callback_metrics`` (e.g. ``val_loss``), so ``find_model(sort=[("val_loss", 1)])`` picks the best.
    Load one back with ``hub.latest_checkpoint(run, into=MyModule())`` (or ``find_model``).

    Args:
        hub: The hub when no :class:`TensorHubLogger` is in the trainer. Default ``None``: ``TensorHub()``.
        every_n_epochs: Save every this many epochs (>= 1). Default 1.
        model_name: The records' ``model_name``. Default ``None``: ``"<run name>/checkpoint"``.
    """

    def __init__(self, hub: TensorHub | None = None, every_n_epochs: int = 1, model_name: str | None = None) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            from tensorhub.errors import InvalidArgumentError

            raise InvalidArgumentError(f"every_n_epochs must be an int >= 1, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self.model_name = model_name
        self._own = RunBinding(hub)

    def _binding(self, trainer: Any) -> RunBinding:
        for logger in getattr(trainer, "loggers", []):
            if isinstance(logger, TensorHubLogger):
                return logger.binding
        return self._own

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Save the module when the epoch count is a multiple of ``every_n_epochs``."""
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        owned = internal_fields()
        tags = {k: n for k, n in ((str(k), plain_number(v)) for k, v in trainer.callback_metrics.items())
                if n is not None and k not in owned and "." not in k and not k.startswith("$")}
        tags["epoch"] = trainer.current_epoch
        self._binding(trainer).checkpoint(pl_module, trainer.global_step, model_name=self.model_name, **tags)

    @rank_zero_only
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """End the run this callback started itself (none when a :class:`TensorHubLogger` holds it)."""
        self._own.end()
