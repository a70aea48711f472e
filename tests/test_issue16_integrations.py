"""Issue 16 item 1: trainer integrations (``tensorhub.integrations``): PyTorch Lightning, Hugging Face
``transformers`` and Keras 3, each driven with a tiny real model of its framework on CPU for a few
steps. Each checks the run, its training and validation rows and its checkpoint in the store, loaded back.

The frameworks are imported inside the tests (seconds each), so an xdist worker that runs none of them
does not pay for them at collection.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tensorhub import TensorHub
from tensorhub.errors import InvalidArgumentError

from conftest import fresh_uri

os.environ.setdefault("KERAS_BACKEND", "torch")  # no tensorflow here; the integration never picks a backend
os.environ["HF_HUB_OFFLINE"] = "1"  # models are built from tiny configs: nothing is downloaded

BACKENDS = ["file", "mongomock"]  # the integrations only call the hub's API: one store of each kind is enough


@pytest.fixture(params=BACKENDS)
def ihub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TensorHub]:
    with TensorHub(fresh_uri(request.param, request, tmp_path_factory), project_name="integrations") as hub:
        yield hub


def _one_run(hub: TensorHub, name: str) -> dict[str, Any]:
    (run,) = hub.find_runs(run_name=name)
    assert run["status"] == "finished", run["error"]
    return run


# ---------------------------------------------------------------------------- PyTorch Lightning
def _lightning_module() -> Any:
    import lightning

    class Tiny(lightning.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, index: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("loss", loss)
            return loss

        def validation_step(self, batch: Any, index: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Tiny


def test_item01_lightning_logger_and_checkpoint_write_the_run_its_rows_and_its_model(
        ihub: TensorHub, tmp_path: Path) -> None:
    import lightning
    from torch.utils.data import DataLoader, TensorDataset

    from tensorhub.integrations.lightning import TensorHubCheckpoint, TensorHubLogger

    tiny = _lightning_module()
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    logger = TensorHubLogger(ihub, run_name="pl")
    trainer = lightning.Trainer(max_epochs=2, logger=logger, callbacks=[TensorHubCheckpoint()], log_every_n_steps=1,
                                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                                default_root_dir=str(tmp_path), accelerator="cpu")
    model = tiny(lr=0.05)
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))

    run = _one_run(ihub, "pl")
    assert str(run["id"]) == logger.version and logger.name == "pl"
    assert run["params"] == {"lr": 0.05}  # log_hyperparams: the module's save_hyperparameters()
    training = ihub.find_training_logs(task_id=run["id"], sort=[("step", 1)])
    assert len(training) == 8 and all("loss" in r and r["epoch"] in (0, 1) for r in training)  # 2 epochs x 4 batches
    validation = ihub.find_validation_logs(task_id=run["id"], sort=[("step", 1)])
    assert [r["epoch"] for r in validation] == [0, 1] and all("loss" in r for r in validation)  # val_loss -> loss
    checkpoints = ihub.compare_models(task=run["id"], checkpoint_step={"$exists": True},
                                      keys=["checkpoint_step", "epoch"])
    assert sorted((m["checkpoint_step"], m["epoch"]) for m in checkpoints) == [(4, 0), (8, 1)]
    loaded = ihub.latest_checkpoint(logger.version, into=tiny())
    assert loaded._model_name == "pl/checkpoint" and loaded._val_loss == validation[-1]["loss"]
    torch.testing.assert_close(loaded.layer.weight, model.layer.weight, rtol=0, atol=0)


# ---------------------------------------------------------------------------- Hugging Face transformers
def test_item01_transformers_callback_writes_the_run_its_rows_and_its_model(ihub: TensorHub, tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from tensorhub.integrations.transformers import TensorHubCallback

    class Tokens(torch.utils.data.Dataset):
        def __init__(self) -> None:
            generator = torch.Generator().manual_seed(0)
            self.x = torch.randint(0, 30, (8, 6), generator=generator)
            self.y = torch.randint(0, 2, (8,), generator=generator)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": self.x[i], "labels": self.y[i]}

    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, logging_steps=1,
                             eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, report_to=[],
                             use_cpu=True, disable_tqdm=True, save_only_model=True, learning_rate=1e-3)
    callback = TensorHubCallback(ihub, run_name="hf", params={"hidden_size": 8})
    Trainer(model=model, args=args, train_dataset=Tokens(), eval_dataset=Tokens(), callbacks=[callback]).train()

    run = _one_run(ihub, "hf")
    assert run["params"]["learning_rate"] == 1e-3 and run["params"]["max_steps"] == 4
    assert run["params"]["hidden_size"] == 8
    training = ihub.find_training_logs(task_id=run["id"], loss={"$exists": True}, sort=[("step", 1)])
    assert [r["step"] for r in training] == [1, 2, 3, 4] and all("learning_rate" in r for r in training)
    assert all(any(k not in ("epoch",) and k.startswith(("loss", "train_", "grad", "learning", "total"))
                   for k in r) for r in ihub.find_training_logs(task_id=run["id"]))  # no epoch-only rows
    validation = ihub.find_validation_logs(task_id=run["id"], sort=[("step", 1)])
    assert [r["step"] for r in validation] == [2, 4] and all("loss" in r for r in validation)  # eval_loss -> loss
    loaded = ihub.latest_checkpoint(callback.run_id, into=BertForSequenceClassification(config))
    assert loaded._checkpoint_step == 4 and loaded._model_name == "hf/checkpoint"
    steps = ihub.compare_models(task=run["id"], checkpoint_step={"$exists": True}, keys=["checkpoint_step"])
    assert sorted(m["checkpoint_step"] for m in steps) == [2, 4]  # save_steps=2 of max_steps=4
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)


# ---------------------------------------------------------------------------- Keras 3
def _keras_model() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _xy() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    return x, x.sum(1, keepdims=True)


def test_item01_keras_callback_writes_the_run_its_rows_and_its_model(ihub: TensorHub) -> None:
    from tensorhub.integrations.keras import TensorHubCallback

    model, (x, y) = _keras_model(), _xy()
    callback = TensorHubCallback(ihub, run_name="keras", log_every_n_batches=2, params={"units": 3})
    model.fit(x, y, batch_size=4, epochs=2, validation_data=(x, y), callbacks=[callback], verbose=0)

    run = _one_run(ihub, "keras")
    assert run["params"] == {"epochs": 2, "steps": 4, "units": 3}
    training = ihub.find_training_logs(task_id=run["id"], sort=[("step", 1)])
    assert [r["step"] for r in training] == [2, 4, 6, 8] and all("loss" in r for r in training)
    validation = ihub.find_validation_logs(task_id=run["id"], sort=[("step", 1)])
    assert [(r["step"], r["epoch"]) for r in validation] == [(4, 0), (8, 1)] and all("loss" in r for r in validation)
    weights = ihub.latest_checkpoint(callback.run_id)
    assert weights._checkpoint_step == 8 and weights._epoch == 1
    clone = _keras_model()
    clone.set_weights(list(weights))
    np.testing.assert_array_equal(clone.predict(x, verbose=0), model.predict(x, verbose=0))


def test_item01_an_integration_logs_to_the_current_run_and_leaves_it_open(ihub: TensorHub) -> None:
    from tensorhub.integrations.keras import TensorHubCallback

    model, (x, y) = _keras_model(), _xy()
    with ihub.start_run("outer", lr=0.01) as run:
        callback = TensorHubCallback(ihub, run_name="ignored", log_every_n_batches=0, params={"lr": 1, "units": 3})
        model.fit(x, y, batch_size=8, epochs=1, validation_data=(x, y), callbacks=[callback], verbose=0)
        assert not run.ended and callback.run_id == run.id  # fit's end did not end the user's run
        run.log(step=99, after=1.0)
    (found,) = ihub.find_runs()
    assert found["run_name"] == "outer" and found["status"] == "finished"
    assert found["params"] == {"lr": 0.01, "epochs": 1, "steps": 2, "units": 3}  # the run's own lr kept
    # log_every_n_batches=0: the epoch's training metrics as one row, beside its validation row
    assert [r["step"] for r in ihub.find_training_logs(task_id=run.id, loss={"$exists": True})] == [2]
    assert len(ihub.find_validation_logs(task_id=run.id)) == 1
    assert ihub.latest_checkpoint(run)._checkpoint_step == 2
    with pytest.raises(InvalidArgumentError, match="log_every_n_batches"):
        TensorHubCallback(ihub, log_every_n_batches=-1)


def test_item01_metric_names_choose_the_log_kind() -> None:
    from tensorhub.integrations._common import split_metrics

    rows = split_metrics({"loss": 1.0, "val_loss": torch.tensor(2.0), "eval/acc": np.float32(0.5),
                          "test_acc": 0.25, "validation_f1": 3, "value": 4.0, "val_": 5.0, "a.b": 6.0,
                          "text": "not a number", "vector": np.ones(3)})
    assert rows == {"training": {"loss": 1.0, "value": 4.0, "val_": 5.0, "a_b": 6.0},
                    "validation": {"loss": 2.0, "acc": 0.5, "f1": 3}, "testing": {"acc": 0.25}}
