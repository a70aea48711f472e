"""The demo's training task: a one-hidden-layer MLP on scikit-learn's digits, trained epoch by epoch.

Run by a tensorhub runner with ``n_hidden`` (and ``max_iter``, the epochs) bound as globals. It connects
with ``TensorHub()`` (no arguments: the store and project the task came from), loads the dataset,
logs the loss curve (``hub.log``: rows stamped with the task's id and attempt), checkpoints the
weights every few epochs (``hub.checkpoint``; arrays, not the estimator: skops' import alone would cost
seconds per task) and, when it runs as a later attempt (its runner died,
or a retry), resumes from the newest checkpoint any attempt left (``hub.latest_checkpoint``) instead
of from scratch. At the end it stores the parameters as a model and sets ``test_accuracy``.
"""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from tensorhub import TensorHub

CHECKPOINT_EVERY = 10  # epochs

hub = TensorHub()
X_train, y_train, X_val, y_val, X_test, y_test = hub.find_dataset("digits")

warnings.filterwarnings("ignore", category=ConvergenceWarning)


def weights(clf: MLPClassifier) -> dict:
    """The network's parameter arrays (the estimator's own, so assigning into them sets its weights)."""
    return {"W1": clf.coefs_[0], "b1": clf.intercepts_[0], "W2": clf.coefs_[1], "b2": clf.intercepts_[1]}


clf = MLPClassifier(hidden_layer_sizes=(n_hidden,), random_state=0)  # noqa: F821
# a later attempt (its runner died, or a retry): the newest checkpoint any attempt of this task saved
found = hub.latest_checkpoint()  # the arrays, with ._checkpoint_step; None on a first run
start = 0 if found is None else found._checkpoint_step + 1
if found is not None:
    clf.partial_fit(X_train[:10], y_train[:10], classes=np.arange(10))  # builds the layers
    for name, array in weights(clf).items():
        array[...] = found[name]  # resumed weights (the optimizer's moments start afresh)
for epoch in range(start, max_iter):  # noqa: F821
    clf.partial_fit(X_train, y_train, classes=np.arange(10))
    hub.log(step=epoch, loss=clf.loss_)  # buffered, written in batches
    if epoch % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
        hub.checkpoint(weights(clf), step=epoch)  # a model record: task_id, attempt, checkpoint_step
val_accuracy = float(clf.score(X_val, y_val))
test_accuracy = float(clf.score(X_test, y_test))
hub.log(kind="validation", accuracy=val_accuracy)
hub.save_model(weights(clf), "digits-mlp", n_hidden=n_hidden, val_accuracy=val_accuracy,  # noqa: F821
               test_accuracy=test_accuracy)
