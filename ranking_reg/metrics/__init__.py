"""Evaluation metrics: exact kNN retrieval (Recall@K, MAP@R), NMI of k-means, classification.

- :mod:`~ranking_reg.metrics.knn`: exact chunked kNN of a set against itself, and of new queries in a gallery;
- :mod:`~ranking_reg.metrics.kmeans`: seeded k-means (for NMI);
- :mod:`~ranking_reg.metrics.retrieval`: Recall@K, MAP@R and NMI of an embedding;
- :mod:`~ranking_reg.metrics.classification`: accuracy, per-class and many/medium/few-shot;
- :mod:`~ranking_reg.metrics.knn_classify`: kNN classification against a labelled gallery and
  its fusion with the softmax;
- :mod:`~ranking_reg.metrics.calibration`: expected calibration error and reliability bins of
  the softmax head;
- :mod:`~ranking_reg.metrics.geometry`: intra/inter-class distances of an embedding, pair
  distance samples;
- :mod:`~ranking_reg.metrics.evaluator`: collects one evaluation's outputs and scores them.
"""

from ranking_reg.metrics.calibration import (
    ReliabilityBins,
    expected_calibration_error,
    reliability_bins,
)
from ranking_reg.metrics.classification import (
    classification_metrics,
    per_class_accuracy,
    shot_accuracy,
    shot_groups,
    shot_recall,
)
from ranking_reg.metrics.evaluator import EvaluationResult, Evaluator, notify_evaluation_end
from ranking_reg.metrics.geometry import embedding_geometry, pair_distance_sample
from ranking_reg.metrics.kmeans import kmeans
from ranking_reg.metrics.knn import nearest_neighbors, search_gallery
from ranking_reg.metrics.knn_classify import knn_classification_metrics
from ranking_reg.metrics.retrieval import retrieval_metrics

__all__ = [
    "EvaluationResult",
    "Evaluator",
    "ReliabilityBins",
    "classification_metrics",
    "embedding_geometry",
    "expected_calibration_error",
    "kmeans",
    "knn_classification_metrics",
    "nearest_neighbors",
    "notify_evaluation_end",
    "pair_distance_sample",
    "per_class_accuracy",
    "reliability_bins",
    "retrieval_metrics",
    "search_gallery",
    "shot_accuracy",
    "shot_groups",
    "shot_recall",
]
