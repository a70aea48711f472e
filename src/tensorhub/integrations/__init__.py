"""Trainer integrations: log a framework's metrics and hyper-parameters to a tensorhub run and save its
checkpoints as model records (chunked, deduplicated, with lineage).

One module per framework, each importing its framework only when imported itself (an extra each):

* :mod:`tensorhub.integrations.lightning` (``tensorhub[lightning]``): ``TensorHubLogger`` and
  ``TensorHubCheckpoint`` for PyTorch Lightning's ``Trainer``;
* :mod:`tensorhub.integrations.transformers` (``tensorhub[transformers]``): ``TensorHubCallback`` for
  Hugging Face's ``Trainer``;
* :mod:`tensorhub.integrations.keras` (``tensorhub[keras]``): ``TensorHubCallback`` for Keras 3's ``fit``.

Each logs to the current run (a task's script: the task attempt; inside ``hub.start_run``: that run),
or starts one named ``run_name`` when there is none, and ends it when training ends. Metric names
tell the log kind (:func:`~tensorhub.integrations._common.split_metrics`): ``val_``/``val/``/
``valid_``/``validation_``/``eval_`` prefixes are validation rows, ``test_``/``test/`` testing rows
(the prefix dropped), any other name a training row.
"""
