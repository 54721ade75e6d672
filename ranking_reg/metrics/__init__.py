"""Evaluation metrics: exact kNN retrieval (Recall@K, MAP@R), NMI of k-means, classification.

- :mod:`~ranking_reg.metrics.knn`: exact chunked kNN of a set against itself, and of new queries in a gallery;
- :mod:`~ranking_reg.metrics.kmeans`: seeded k-means (for NMI);
- :mod:`~ranking_reg.metrics.retrieval`: Recall@K, MAP@R and NMI of an embedding;
- :mod:`~ranking_reg.metrics.classification`: accuracy, per-class and many/medium/few-shot;
- :mod:`~ranking_reg.metrics.knn_classify`: kNN classification against a labelled gallery and
  its fusion with the softmax;
- :mod:`~ranking_reg.metrics.evaluator`: collects one evaluation's outputs and scores them.
"""

from ranking_reg.metrics.classification import (
    classification_metrics,
    per_class_accuracy,
    shot_accuracy,
)
from ranking_reg.metrics.evaluator import EvaluationResult, Evaluator, notify_evaluation_end
from ranking_reg.metrics.kmeans import kmeans
from ranking_reg.metrics.knn import nearest_neighbors, search_gallery
from ranking_reg.metrics.knn_classify import knn_classification_metrics
from ranking_reg.metrics.retrieval import retrieval_metrics

__all__ = [
    "EvaluationResult",
    "Evaluator",
    "classification_metrics",
    "kmeans",
    "knn_classification_metrics",
    "nearest_neighbors",
    "notify_evaluation_end",
    "per_class_accuracy",
    "retrieval_metrics",
    "search_gallery",
    "shot_accuracy",
]
