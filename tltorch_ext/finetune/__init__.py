"""finetune: StochNorm, BSS, regularizers and strategies for fine-tuning pre-trained models
(docs/api_stochnorm.md, docs/api_bss.md, docs/api_finetune.md).

The three ``Classifier`` variants are reached through their modules: ``lwf.Classifier``,
``co_tuning.Classifier`` (the same class) and ``bi_tuning.Classifier``.
"""
from . import bi_tuning, co_tuning, lwf, strategies
from .bi_tuning import BiTuning, Bituning
from .bss import BatchSpectralShrinkage
from .co_tuning import CoTuningLoss, Relationship
from .layer_getter import IntermediateLayerGetter
from .lwf import LwFLoss, collect_pretrain_labels
from .regularization import (
    AttentionBehavioralRegularization,
    BehavioralRegularization,
    L2Regularization,
    SPRegularization,
    compute_channel_attention,
)
from .stochnorm import StochNorm1d, StochNorm2d, StochNorm3d, convert_model
from .strategies import (
    FeatureExtractor,
    GradualUnfreezing,
    extract_features,
    forgetting,
    freeze_policy,
    layerwise_lr_groups,
    replace_head,
)
from .sync_stochnorm import SyncStochNorm

__all__ = [
    # StochNorm (docs/api_stochnorm.md)
    "StochNorm1d",
    "StochNorm2d",
    "StochNorm3d",
    "SyncStochNorm",
    "convert_model",
    # BSS (docs/api_bss.md)
    "BatchSpectralShrinkage",
    # regularizers (docs/api_finetune.md)
    "L2Regularization",
    "SPRegularization",
    "BehavioralRegularization",
    "AttentionBehavioralRegularization",
    "compute_channel_attention",
    "IntermediateLayerGetter",
    # LwF, Co-Tuning, Bi-Tuning (docs/api_finetune.md)
    "lwf",
    "LwFLoss",
    "collect_pretrain_labels",
    "co_tuning",
    "CoTuningLoss",
    "Relationship",
    "bi_tuning",
    "BiTuning",
    "Bituning",
    # strategies (docs/api_finetune.md)
    "strategies",
    "FeatureExtractor",
    "extract_features",
    "GradualUnfreezing",
    "layerwise_lr_groups",
    "freeze_policy",
    "forgetting",
    "replace_head",
]
