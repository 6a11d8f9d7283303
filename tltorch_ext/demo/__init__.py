"""``tltorch-ext demo``: what transfer learning and each method buy, as learning curves.

A model (the small CNN, or ResNet-18/50) is pre-trained on a source task, then trained on a target
task from ``--shots`` labelled samples per class (several values: a learning curve) by each method
(fine-tuning and its regularizers, domain adaptation, training from scratch), over several seeds,
and tested on a held-out 40 % of the target samples that no choice was made on.

Built-in task (nothing is downloaded): scikit-learn's digits at 16×16, split in two halves; the
source is one half, clean and augmented; the target is the other half inverted and noisy (the same
ten classes in another domain). ``--data`` instead: an ``.npz`` with arrays ``x`` (N, H, W) or
(N, C, H, W) and ``y`` (N,), or a folder with one sub-folder of images per class (grayscale,
resized to ``--image-size``); its sorted classes are split in two, source first.

Output: a table on stdout and ``results.json``, ``results.csv`` and ``results.png`` in ``--out``.
The pre-trained source model is cached in ``--cache-dir``.
"""
from ._common import DemoError
from .cli import add_arguments, run_demo
from .data import TransferData, augment, digits_task, load_data, target_split
from .model import ResNet, SmallCNN

__all__ = [
    "DemoError",
    "ResNet",
    "SmallCNN",
    "TransferData",
    "add_arguments",
    "augment",
    "digits_task",
    "load_data",
    "run_demo",
    "target_split",
]
