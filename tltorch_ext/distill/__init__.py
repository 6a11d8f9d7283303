"""distill: knowledge distillation losses (docs/api_distill.md)."""
from .crd import CRDLoss, ContrastLoss, ContrastMemory, Embed
from .fsp import FSP
from .kd import KDLoss
from .nst import NSTLoss
from .ofd import OFD, pre_relu_features

__all__ = [
    "CRDLoss",
    "ContrastLoss",
    "ContrastMemory",
    "Embed",
    "FSP",
    "KDLoss",
    "NSTLoss",
    "OFD",
    "pre_relu_features",
]
