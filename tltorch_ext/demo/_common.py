"""The demo's constants (image suffixes, layers, loss weights, pre-training) and DemoError."""
from __future__ import annotations

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
LAYERS = ("backbone.block1", "backbone.block2", "backbone.block3")  # DELTA's feature maps

# Loss weights of the regularizers (loss = CE + weight · regularizer): the usual values of the
# methods' papers and reference code, not tuned on this task's test set.
L2SP_WEIGHT = 0.01
DELTA_WEIGHT = 0.01
BSS_WEIGHT = 1e-3
STOCHNORM_P = 0.5
CO_TUNING_WEIGHT = 2.3
LWF_WEIGHT = 1.0
LWF_TEMPERATURE = 2.0
# Source pre-training: SGD over every source sample; part of the cache key.
PRETRAIN_RECIPE = {
    "optimizer": "SGD", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
    "batch_size": 64,
}


class DemoError(ValueError):
    """Bad demo input (data path, data layout, options), reported without a traceback."""
