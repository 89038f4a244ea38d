"""A task's metrics, from the confusion matrix of its predictions (which several processes can simply add up).

Percent, as GLUE reports them: accuracy; F1 of the positive class (label 1: MRPC's "equivalent"); Matthews
correlation (CoLA's metric, multi-class in Gorodkin's form, as scikit-learn computes it). A dataset names its
headline metric (``Dataset.metric``); every run reports accuracy as well."""
from __future__ import annotations

from typing import Callable

import torch

Metric = Callable[[torch.Tensor], float]


def confusion(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, ``[true, predicted]``, as float64 on the predictions' device."""
    index = labels.to(predicted.device) * num_classes + predicted
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes).double()


def accuracy(cm: torch.Tensor) -> float:
    return 100.0 * float(cm.diagonal().sum() / cm.sum().clamp(min=1))


def f1(cm: torch.Tensor) -> float:
    tp, fp, fn = cm[1, 1], cm[0, 1], cm[1, 0]
    return 100.0 * float(2 * tp / (2 * tp + fp + fn).clamp(min=1))


def matthews(cm: torch.Tensor) -> float:
    n, correct = cm.sum(), cm.diagonal().sum()
    true, predicted = cm.sum(1), cm.sum(0)
    numerator = correct * n - (true * predicted).sum()
    denominator = ((n * n - (predicted * predicted).sum()) * (n * n - (true * true).sum())).sqrt()
    return 100.0 * float(numerator / denominator) if denominator > 0 else 0.0


METRICS: dict[str, Metric] = {"accuracy": accuracy, "f1": f1, "matthews": matthews}
LABELS = {"accuracy": "accuracy", "f1": "F1", "matthews": "Matthews correlation"}  # in tables and reports


def compute(cm: torch.Tensor, headline: str) -> dict[str, float]:
    """Accuracy, and the headline metric when it is another."""
    return {name: METRICS[name](cm) for name in dict.fromkeys(("accuracy", headline))}
