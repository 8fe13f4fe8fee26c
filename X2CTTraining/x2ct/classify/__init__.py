"""Disease classifiers on radiographs, (synthetic) CT and both: tasks and label files, data sets, training and
evaluation (docs/classifiers.md).

* :mod:`.tasks`: the tasks (``tb``, ``tb_type``, ``tb_activity``, ``pe``) and label-CSV validation;
* :mod:`.data`: :class:`ClassifierDataset`, batches in the classifier contract's format;
* :mod:`.config`, :mod:`.augment`, :mod:`.train`: ``x2ct train-classifier``;
* :mod:`.checkpoint`: saving / loading classifiers (safetensors + JSON, sha256 verified);
* :mod:`.evaluate`: ``x2ct evaluate-classifier`` (DeLong AUC, frozen Youden thresholds, Wilson CIs,
  DeLong comparison, CAM hit rate);

``x2ct synthesize-ct`` (a generator's CT of every case, a CT source) is :mod:`x2ct.inference.synthesize`.

Submodules are imported on use (torch models and MONAI take seconds to import).
"""

from __future__ import annotations

from .tasks import TASKS, CaseLabels, LabelTable, Task, get_task, read_labels

__all__ = ["TASKS", "CaseLabels", "LabelTable", "Task", "get_task", "read_labels"]
