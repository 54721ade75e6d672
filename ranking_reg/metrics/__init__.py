"""Evaluation metrics: exact kNN retrieval (Recall@K, MAP@R), NMI of k-means, classification."""

from ranking_reg.metrics.retrieval import *  # noqa: F401,F403
from ranking_reg.metrics.retrieval import (  # noqa: F401
    _group_sizes,
    classification_metrics,
    kmeans,
    nearest_neighbors,
    retrieval_metrics,
    shot_accuracy,
)
