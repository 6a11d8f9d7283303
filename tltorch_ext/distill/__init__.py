"""distill: knowledge distillation losses (SPEC §4)."""
from .crd import CRDLoss, ContrastLoss, ContrastMemory, Embed
from .kd import KDLoss
from .ofd import OFD, pre_relu_features

__all__ = [
    "CRDLoss",
    "ContrastLoss",
    "ContrastMemory",
    "Embed",
    "KDLoss",
    "OFD",
    "pre_relu_features",
]
