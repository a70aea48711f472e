"""Keras 3: ``TensorHubCallback`` logs ``fit``'s metrics to a run and saves the weights as its checkpoint.
Needs ``tensorhub[keras]`` and a Keras backend (``KERAS_BACKEND``: jax, tensorflow or torch; this module
never chooses one).

Example::

    from tensorhub.integrations.keras import TensorHubCallback

    callback = TensorHubCallback(hub, run_name="mnist", log_every_n_batches=10)
    model.fit(x, y, validation_data=(xv, yv), epochs=3, callbacks=[callback])
    model.set_weights(hub.latest_checkpoint(callback.run_id))   # the last epoch's weights

Training rows every ``log_every_n_batches`` batches (Keras' running means, at the global batch count);
at each epoch's end a validation row of the ``val_*`` metrics (``val_loss`` as ``loss``), and the weights
(``model.get_weights()``: a list of arrays, any backend) saved as the run's checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from tensorhub.errors import InvalidArgumentError
from tensorhub.hub import TensorHub
from tensorhub.integrations._common import RunBinding, split_metrics


class TensorHubCallback(keras.callbacks.Callback):
    """A Keras callback writing to a tensorhub run (the current one, or one it starts and ends).

    Args:
        hub: The hub. Default ``None``: ``TensorHub()`` (in a task's script, the task's store).
        run_name: The name of the run it starts when none is current. Default ``None``: ``"interactive"``.
        log_every_n_batches: Log a training row every this many batches; 0: only at each epoch's end.
            Default 1.
        checkpoint_every_n_epochs: Save the weights as a checkpoint every this many epochs; 0: never.
            Default 1.
        params: Parameters of a run it starts, besides ``fit``'s ``epochs`` and ``steps``. Default ``None``.
        model_name: The checkpoints' ``model_name``. Default ``None``: ``"<run name>/checkpoint"``.
    """

    def __init__(self, hub: TensorHub | None = None, run_name: str | None = None, log_every_n_batches: int = 1,
                 checkpoint_every_n_epochs: int = 1, params: Mapping[str, Any] | None = None,
                 model_name: str | None = None) -> None:
        super().__init__()
        for name, value in (("log_every_n_batches", log_every_n_batches),
                            ("checkpoint_every_n_epochs", checkpoint_every_n_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{name} must be an int >= 0, got {value!r}")
        self.binding = RunBinding(hub, run_name)
        self.log_every_n_batches = log_every_n_batches
        self.checkpoint_every_n_epochs = checkpoint_every_n_epochs
        self.extra_params = dict(params or {})
        self.model_name = model_name
        self._step = 0  # batches trained over every fit() with this callback: the rows' step

    @property
    def run_id(self) -> Any:
        """The id of the run it logs to (``hub.latest_checkpoint(callback.run_id)``)."""
        return self.binding.run_id

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        """Find or start the run, with ``fit``'s ``epochs``/``steps`` and ``params`` as parameters."""
        given = {k: v for k, v in (self.params or {}).items() if k in ("epochs", "steps")}
        self.binding.log_params({**given, **self.extra_params})

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """A training row every ``log_every_n_batches`` batches."""
        self._step += 1
        if self.log_every_n_batches and logs and self._step % self.log_every_n_batches == 0:
            training = split_metrics(logs).get("training")
            if training:
                self.binding.current().log(step=self._step, kind="training", **training)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        """The epoch's validation row (and training row when batches are not logged); a checkpoint."""
        for kind, row in split_metrics(logs or {}).items():
            if kind != "training" or not self.log_every_n_batches:
                self.binding.current().log(step=self._step, kind=kind, epoch=epoch, **row)
        if self.checkpoint_every_n_epochs and (epoch + 1) % self.checkpoint_every_n_epochs == 0:
            self.binding.checkpoint(self.model.get_weights(), self._step, model_name=self.model_name, epoch=epoch)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        """End the run it started (else write what waits)."""
        self.binding.end()
