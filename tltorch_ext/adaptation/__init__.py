"""adaptation: domain-adversarial training (gradient reversal, DANN) and self-ensembling."""
from .dann import DomainAdversarialLoss, DomainDiscriminator
from .grl import GradientReverseLayer, WarmStartGradientReverseLayer, grad_reverse
from .self_ensemble import (
    ClassBalanceLoss,
    ConsistencyLoss,
    EmaTeacher,
    L2ConsistencyLoss,
    confidence_mask,
)

__all__ = [
    "grad_reverse",
    "GradientReverseLayer",
    "WarmStartGradientReverseLayer",
    "DomainDiscriminator",
    "DomainAdversarialLoss",
    "ConsistencyLoss",
    "L2ConsistencyLoss",
    "ClassBalanceLoss",
    "EmaTeacher",
    "confidence_mask",
]
