"""adaptation: domain-adversarial training (gradient reversal, DANN, CDAN), discrepancy and
regularization losses for domain adaptation (DAN's MK-MMD, JAN's joint MMD, MDD, MCC, AFN, BSP)
and self-ensembling."""
from .afn import AdaptiveFeatureNorm, StepwiseAdaptiveFeatureNorm
from .bsp import BatchSpectralPenalization
from .cdan import ConditionalDomainAdversarialLoss, MultiLinearMap, RandomizedMultiLinearMap
from .dann import DomainAdversarialLoss, DomainDiscriminator
from .grl import GradientReverseLayer, WarmStartGradientReverseLayer, grad_reverse
from .mcc import MinimumClassConfusionLoss
from .mdd import MarginDisparityDiscrepancy
from ..ops.mk_mmd import GaussianKernels, joint_mk_mmd, mk_mmd
from .mmd import JointMultipleKernelMMD, MultipleKernelMMD
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
    "MultiLinearMap",
    "RandomizedMultiLinearMap",
    "ConditionalDomainAdversarialLoss",
    "MinimumClassConfusionLoss",
    "MarginDisparityDiscrepancy",
    "MultipleKernelMMD",
    "JointMultipleKernelMMD",
    "GaussianKernels",
    "mk_mmd",
    "joint_mk_mmd",
    "StepwiseAdaptiveFeatureNorm",
    "AdaptiveFeatureNorm",
    "BatchSpectralPenalization",
    "ConsistencyLoss",
    "L2ConsistencyLoss",
    "ClassBalanceLoss",
    "EmaTeacher",
    "confidence_mask",
]
