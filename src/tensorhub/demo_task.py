"""The demo's training task: a one-hidden-layer MLP on scikit-learn's digits.

Run by a tensorhub runner with ``n_hidden`` (and ``max_iter``) bound as globals. It connects
with ``TensorHub()`` (no arguments: the store and project the task came from), loads the
dataset, logs the loss curve (``hub.log``: rows stamped with the task's id), stores the parameters as a model and sets ``test_accuracy``.
"""

from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
import warnings

from tensorhub import TensorHub

hub = TensorHub()
X_train, y_train, X_val, y_val, X_test, y_test = hub.find_dataset("digits")

warnings.filterwarnings("ignore", category=ConvergenceWarning)
clf = MLPClassifier(hidden_layer_sizes=(n_hidden,), max_iter=max_iter, random_state=0)  # noqa: F821
clf.fit(X_train, y_train)
for i, loss in enumerate(clf.loss_curve_):
    hub.log(step=i, loss=loss)  # buffered, written in batches; each row carries this task's id and attempt
val_accuracy = float(clf.score(X_val, y_val))
test_accuracy = float(clf.score(X_test, y_test))
hub.log(kind="validation", accuracy=val_accuracy)
params = {"W1": clf.coefs_[0], "b1": clf.intercepts_[0], "W2": clf.coefs_[1], "b2": clf.intercepts_[1]}
hub.save_model(params, "digits-mlp", n_hidden=n_hidden, val_accuracy=val_accuracy,  # noqa: F821
               test_accuracy=test_accuracy)
