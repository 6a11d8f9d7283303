"""``tltorch-ext demo``: fine-tuning methods compared on a small transfer task.

A small CNN with BatchNorm is pre-trained on a source task (the first half of the classes, every
sample), then fine-tuned on a target task (the second half of the classes, ``--shots`` labelled
samples per class) by each method, over several seeds, and tested on the remaining target samples.
Data: scikit-learn's bundled 8×8 digits (source 0–4, target 5–9; nothing is downloaded), or the
user's ``--data``: an ``.npz`` with arrays ``x`` (N, H, W) or (N, C, H, W) and ``y`` (N,), or a
folder with one sub-folder of images per class (read with Pillow as grayscale, resized to
``--image-size``). Classes are sorted (by label value, or folder name); the first ⌊K/2⌋ are the
source task and the others the target task.

Output: a table on stdout (mean ± std target test accuracy, wall time per run, ms per training step
and the regularizer's overhead per step above plain fine-tuning), and ``results.json``,
``results.csv`` and ``results.png`` in ``--out``. The pre-trained source model is cached in
``--cache-dir`` under a hash of the architecture, the source data and the pre-training settings.
"""
from ._common import DemoError
from .cli import add_arguments, run_demo
from .data import TransferData, few_shot_split, load_data
from .model import SmallCNN

__all__ = [
    "DemoError",
    "SmallCNN",
    "TransferData",
    "add_arguments",
    "few_shot_split",
    "load_data",
    "run_demo",
]
