"""Issue 12, item 2 "mistakes speak": misspelled options, fields and names, and file:// typos.

MongoDB's semantics stay (a query that matches nothing returns None / [] / 0); what is added is a
warning that names the likely mistake (once per call site), a refusal of tags that are near
misses of a method's own options, and stores that are created by a write, never by a read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tensorhub import TensorHub, hints, registry
from tensorhub.errors import InvalidArgumentTypeError, NotFoundError
from tensorhub.records import Records

from conftest import write_script


def _hints(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tensorhub" and r.levelno == logging.WARNING]


@pytest.fixture(autouse=True)
def _forget_warned_sites() -> None:
    """A call site warns once per process; each test (and each backend of one) starts afresh."""
    hints._warned.clear()


@pytest.fixture
def file_hub(tmp_path: Path) -> Any:
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        yield hub


# ---------------------------------------------------------------------------- find_* / delete_* that find nothing
def test_item2_a_misspelled_field_warns_once_per_call_site_with_the_close_field(
        hub: TensorHub, caplog: pytest.LogCaptureFixture) -> None:
    hub.save_dataset([np.arange(3)], "mnist", version="1.0")
    caplog.set_level(logging.WARNING, logger="tensorhub")
    for _ in range(3):  # one call site: one warning
        assert hub.find_dataset("mnist", verison="1.0") is None
    (hint,) = _hints(caplog)
    assert "no dataset matches" in hint and "'verison': '1.0'" in hint and "did you mean 'version'" in hint
    assert hub.find_dataset("mnist", version="1.0") is not None  # the right field still finds it


def test_item2_a_misspelled_name_warns_with_the_close_names(hub: TensorHub, caplog: pytest.LogCaptureFixture) -> None:
    hub.save_dataset([np.arange(3)], "mnist")
    hub.save_model([np.ones(2)], "mlp-small")
    caplog.set_level(logging.WARNING, logger="tensorhub")
    assert hub.find_dataset("mnsit") is None
    assert hub.find_all_models(model_name="mlp-smal") == []
    dataset_hint, model_hint = _hints(caplog)
    assert "did you mean dataset_name='mnist'?" in dataset_hint
    assert "did you mean model_name='mlp-small'?" in model_hint


def test_item2_a_query_key_close_to_an_option_names_the_option(hub: TensorHub,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    hub.save_model([np.ones(2)], "mlp")
    caplog.set_level(logging.WARNING, logger="tensorhub")
    assert hub.find_model(trustd=True) is None
    assert hub.compare_models("mlp", key=["accuracy"]) == []
    trusted, keys = _hints(caplog)
    assert "did you mean the option trusted=?" in trusted and "no recent model has a field 'trustd'" in trusted
    assert "did you mean the option keys=?" in keys


def test_item2_delete_tasks_with_a_misspelled_field_deletes_nothing_and_says_why(
        hub: TensorHub, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hub.create_task("x", write_script(tmp_path, "y = 1\n"))
    caplog.set_level(logging.WARNING, logger="tensorhub")
    assert hub.delete_tasks(task_nam="x") == 0
    assert hub.delete_training_log(stpe=3) == 0  # an empty collection: nothing to compare with, no warning
    (hint,) = _hints(caplog)
    assert "no task matches {'task_nam': 'x'}" in hint and "did you mean 'task_name'" in hint
    assert len(hub.find_tasks("x")) == 1


def test_item2_logs_name_a_field_no_record_has(hub: TensorHub, caplog: pytest.LogCaptureFixture) -> None:
    hub.save_training_logs([{"step": i, "loss": 1 / (i + 1)} for i in range(3)])
    caplog.set_level(logging.WARNING, logger="tensorhub")
    assert hub.find_training_logs(task_id="t1") == []
    assert hub.find_training_logs(sort=[("step", 1)], limt=2) == []
    missing, option = _hints(caplog)
    assert "no recent training log has a field 'task_id'" in missing
    assert "did you mean the option limit=?" in option


def test_item2_a_find_that_finds_reads_once_and_an_empty_one_reads_one_sample(
        file_hub: TensorHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    file_hub.save_training_log(step=1)
    reads: list[Any] = []
    real_find = Records.find

    def counting(self: Records, *args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs.get("limit"))
        return real_find(self, *args, **kwargs)

    monkeypatch.setattr(Records, "find", counting)
    caplog.set_level(logging.WARNING, logger="tensorhub")
    assert len(file_hub.find_training_logs(step=1)) == 1
    assert reads == [None]  # found: nothing extra
    reads.clear()
    for _ in range(2):
        assert file_hub.find_training_logs(stp=1) == []
    assert reads == [None, 20, None]  # empty: one sample of 20 records, and none once the site warned
    assert len(_hints(caplog)) == 1


# ---------------------------------------------------------------------------- misspelled options of runs
def test_item4_misspelled_options_of_run_task_wait_and_stream_speak(
        hub: TensorHub, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hub.create_task("t", write_script(tmp_path, "y = 1\n"))
    hub.save_dataset([np.arange(10)], "d")
    caplog.set_level(logging.WARNING, logger="tensorhub")
    assert hub.run_task("t", leese=30) is False
    assert hub.wait_for_tasks("t", timout=1) == []
    run_hint, wait_hint = _hints(caplog)
    assert "did you mean the option lease=?" in run_hint and "did you mean the option timeout=" in wait_hint
    with pytest.raises(NotFoundError, match=r"did you mean the option prefetch=\?"):
        hub.stream_dataset("d", batch_size=2, prefech=2)
    with pytest.raises(NotFoundError, match=r"did you mean the option shuffle=\?"):
        hub.stream_dataset("d", batch_size=2, shufle=False)
    assert hub.find_tasks("t")[0]["status"] == "pending"  # nothing ran


# ---------------------------------------------------------------------------- tags that are near misses of options
@pytest.mark.parametrize(("wrong", "option"), [
    ("hyperparams", "hyper_parameters"), ("hyper_params", "hyper_parameters"), ("hyperparameters", "hyper_parameters"),
    ("result_keys", "saved_result_keys"), ("saved_results_keys", "saved_result_keys"),
    ("max_attempt", "max_attempts"), ("timeouts", "timeout"), ("prority", "priority"),
    ("retry_on_errors", "retry_on_error"), ("task_nam", "task_name"), ("scrip", "script"),
])
def test_item2_create_task_refuses_near_misses_of_its_parameters(file_hub: TensorHub, tmp_path: Path,
                                                                  wrong: str, option: str) -> None:
    script = write_script(tmp_path, "y = 1\n")
    with pytest.raises(InvalidArgumentTypeError, match=f"did you mean {option}=\\?") as refused:
        file_hub.create_task("t", script, **{wrong: {"n_units": 800}})
    assert isinstance(refused.value, TypeError) and f"{wrong}=" in str(refused.value)
    with pytest.raises(InvalidArgumentTypeError, match=f"did you mean {option}=\\?"):
        file_hub.create_sweep("t", script, grid={"lr": [0.1]}, **{wrong: 1})
    assert file_hub.find_tasks() == []  # nothing was written


def test_item2_create_task_keeps_real_tags(file_hub: TensorHub, tmp_path: Path) -> None:
    script = write_script(tmp_path, "y = n_units\n")
    file_hub.create_task("t", script, hyper_parameters={"n_units": 800}, saved_result_keys=["y"],
                         description="800-800", lr=0.1, dataset="mnist")
    (task,) = file_hub.find_tasks("t")
    assert (task["description"], task["lr"], task["dataset"], task["hyper_parameters"]) == (
        "800-800", 0.1, "mnist", {"n_units": 800})


def test_item4_saves_refuse_near_misses_of_their_options(file_hub: TensorHub) -> None:
    with pytest.raises(InvalidArgumentTypeError, match=r"did you mean example_inputs=\?"):
        file_hub.save_model([np.ones(2)], "m", example_input=np.ones(2))
    with pytest.raises(InvalidArgumentTypeError, match=r"did you mean allow_pickle=\?"):
        file_hub.save_model([np.ones(2)], "m", allow_pickel=True)
    with pytest.raises(InvalidArgumentTypeError, match=r"did you mean dataset_name=\?"):
        file_hub.save_dataset([np.ones(2)], datset_name="d")
    assert file_hub.find_all_models() == [] and file_hub.find_dataset_records() == []
    file_hub.save_model([np.ones(2)], "m", accuracy=0.8, name="second_model")  # TensorLayer's tags still work
    assert file_hub.find_model(accuracy=0.8)._name == "second_model"


# ---------------------------------------------------------------------------- file:// typos create nothing
def test_item2_a_read_of_a_file_store_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "typo" / "hub"
    with TensorHub(f"file://{typo}", project_name="p") as hub:
        assert hub.find_dataset("x") is None and hub.find_model() is None and hub.find_training_logs() == []
        assert hub.find_tasks() == [] and hub.run_task() is False and hub.check_unfinished_task() is False
        assert hub.delete_datasets(dataset_name="x") == 0 and hub.cancel_tasks() == 0
        assert hub.collect_garbage(older_than=0)["chunks"] == 0 and hub.compare_models() == []
        assert not typo.exists() and not (tmp_path / "typo").exists()
        with pytest.raises(NotFoundError, match="there is no tensorhub store at") as refused:
            TensorHub(f"file://{typo}", project_name="p", create=False)
        assert str(typo) in str(refused.value)
        with pytest.raises(NotFoundError, match=str(typo)):
            registry.open_stores(f"file://{typo}", create=False)
        assert not typo.exists()
        hub.save_dataset([np.arange(4)], "x")  # the first write creates the store, marked as its index's own
        np.testing.assert_array_equal(hub.find_dataset("x")[0], np.arange(4))
    assert (typo / "index.sqlite").is_file()
    with TensorHub(f"file://{typo}", project_name="p", create=False) as reader:
        np.testing.assert_array_equal(reader.find_dataset("x")[0], np.arange(4))
        assert reader.collect_garbage(older_than=0)["chunks"] == 0  # its chunks belong to this index


def test_item2_create_false_opens_an_existing_store_on_every_backend(hub: TensorHub) -> None:
    hub.save_training_log(step=1)
    with TensorHub(hub.uri, project_name=hub.project_name, blobs=hub.blobs_uri, create=False) as reader:
        assert [r["step"] for r in reader.find_training_logs()] == [1]


def test_item2_a_new_index_on_blobs_of_another_is_refused_at_open_without_writing(tmp_path: Path) -> None:
    owner = f"file://{tmp_path / 'owner'}"
    with TensorHub(owner, project_name="p") as hub:
        hub.save_dataset([np.arange(3)], "d")
    with pytest.raises(Exception, match="belongs to another index"):
        TensorHub(f"file://{tmp_path / 'new'}", project_name="p", blobs=owner)
    assert not (tmp_path / "new").exists()
