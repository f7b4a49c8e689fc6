"""Feature audit: which features a trained model needs, what they cost, and pruning the rest."""

from .importance import auc, permutation_importance, permuted, weight_scores
from .report import AuditReport, FeatureScore, Pruned, audit, prune

__all__ = [
    "AuditReport",
    "FeatureScore",
    "Pruned",
    "auc",
    "audit",
    "permutation_importance",
    "permuted",
    "prune",
    "weight_scores",
]
