"""Every snippet of TensorLayer's TensorHub tutorial (shared/000_*.txt), run on tensorhub.

The snippets are kept as written, with ``tl.db.TensorHub`` replaced by ``tensorhub.TensorHub``.
Three things the page leaves to its reader are supplied: the MongoDB address is the test
server's, ``tl.files.load_mnist_dataset`` is replaced by arrays of MNIST's shapes (nothing may be
downloaded), and the runner's ``while True`` loop is bounded.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pymongo
import pytest

import tensorhub


def load_mnist_dataset(shape=(-1, 784)):
    """Stand-in for tl.files.load_mnist_dataset: MNIST's shapes and dtypes, small row counts."""
    rng = np.random.default_rng(0)
    make = lambda n: (rng.random((n, 784), dtype=np.float32).reshape(shape), rng.integers(0, 10, n))  # noqa: E731
    return (*make(100), *make(20), *make(20))


@pytest.fixture
def db(mongodb_base: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    host, port = mongodb_base.split("//")[1].split(":")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "task_script.py").write_text(
        "import tensorhub\n"
        "db = tensorhub.TensorHub()\n"
        "test_accuracy = 1 - 1 / (n_units1 + n_units2)\n"
        "db.save_model([__import__('numpy').zeros((784, n_units1))], 'mnist-mlp', test_accuracy=test_accuracy)\n"
    )
    # Connect to the database (the snippet, with the test server's address)
    db = tensorhub.TensorHub(ip=host, port=int(port), dbname="temp",
                             username=None, password="password", project_name="tutorial")
    yield db
    for delete in (db.delete_tasks, db.delete_model, db.delete_datasets, db.delete_training_log,
                   db.delete_validation_log, db.delete_testing_log):
        delete()
    db.close()


def test_dataset_management(db: tensorhub.TensorHub) -> None:
    X_train, y_train, _, _, X_test, y_test = load_mnist_dataset()
    db.save_dataset(dataset=[X_train, y_train, X_test, y_test], dataset_name='mnist', description='this is a tutorial')
    dataset = db.find_dataset('mnist')
    assert all(np.array_equal(a, b) for a, b in zip(dataset, [X_train, y_train, X_test, y_test]))
    db.save_dataset(dataset=[X_train[:5], y_train[:5]], dataset_name='mnist', version='1.0')
    dataset = db.find_dataset('mnist', version='1.0')
    assert dataset[0].shape == (5, 784)
    datasets = db.find_all_datasets('mnist')
    assert len(datasets) == 2


def test_model_management(db: tensorhub.TensorHub) -> None:
    sess = None
    net = [np.ones((784, 10), np.float32), np.zeros(10, np.float32)]
    db.save_model(net, accuracy=0.8, loss=2.3, name='second_model')
    with pytest.warns(DeprecationWarning):
        net = db.find_model(sess=sess, accuracy=0.8, loss=2.3)
    assert net._name == 'second_model' and net[0].shape == (784, 10)
    db.save_model([np.ones(2)], accuracy=0.9, loss=1.0, name='third_model', test_accuracy=0.95)
    with pytest.warns(DeprecationWarning):
        ## newest model
        net = db.find_model(sess=sess, sort=[("time", pymongo.DESCENDING)])
        assert net._name == 'third_model'
        net = db.find_model(sess=sess, sort=[("time", -1)])
        assert net._name == 'third_model'
        ## oldest model
        net = db.find_model(sess=sess, sort=[("time", pymongo.ASCENDING)])
        assert net._name == 'second_model'
        net = db.find_model(sess=sess, sort=[("time", 1)])
        assert net._name == 'second_model'
        net = db.find_model(sess=sess, sort=[("test_accuracy", -1)])
        assert net._name == 'third_model'
    db.delete_model()
    assert db.find_model() is None


def test_event_logging_management(db: tensorhub.TensorHub) -> None:
    db.save_training_log(accuracy=0.33)
    db.save_training_log(accuracy=0.44)
    db.delete_training_log(accuracy=0.33)
    assert [r["accuracy"] for r in db.find_training_logs()] == [0.44]
    db.save_validation_log(accuracy=0.5)
    db.save_testing_log(accuracy=0.6)
    db.delete_training_log()
    db.delete_validation_log()
    db.delete_testing_log()
    assert db.find_training_logs() == db.find_validation_logs() == db.find_testing_logs() == []


def test_task_distribution(db: tensorhub.TensorHub) -> None:
    ## save dataset into database, then allow other servers to use it
    X_train, y_train, X_val, y_val, X_test, y_test = load_mnist_dataset(shape=(-1, 784))
    db.save_dataset((X_train, y_train, X_val, y_val, X_test, y_test), 'mnist', description='handwriting digit')

    ## push tasks into database, then allow other servers pull tasks to run
    db.create_task(
        task_name='mnist', script='task_script.py', hyper_parameters=dict(n_units1=800, n_units2=800),
        saved_result_keys=['test_accuracy'], description='800-800'
    )
    db.create_task(
        task_name='mnist', script='task_script.py', hyper_parameters=dict(n_units1=600, n_units2=600),
        saved_result_keys=['test_accuracy'], description='600-600'
    )
    db.create_task(
        task_name='mnist', script='task_script.py', hyper_parameters=dict(n_units1=400, n_units2=400),
        saved_result_keys=['test_accuracy'], description='400-400'
    )

    ## monitors the database and pull tasks to run (bounded here; the page's loop is `while True`)
    for _ in range(5):
        db.run_task(task_name='mnist', sort=[("time", -1)])
        time.sleep(0.01)

    ## wait for tasks to finish
    rounds = 0
    while db.check_unfinished_task(task_name='mnist') and rounds < 100:
        time.sleep(0.1)
        rounds += 1
    assert not db.check_unfinished_task(task_name='mnist')
    assert sorted(t["description"] for t in db.find_tasks('mnist', status='finished')) == ['400-400', '600-600', '800-800']
    best = db.find_model(sort=[("test_accuracy", -1)], model_name='mnist-mlp')
    assert best._test_accuracy == 1 - 1 / 1600
