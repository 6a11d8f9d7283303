"""tltorch_ext: transfer learning for PyTorch with fused Triton and C++/CUDA kernels.

Every public name of the subpackages is re-exported here (the README lists them; docs/ gives the
math).
"""
from ._backend import available_backends, explain_backend, get_backend, set_backend
from . import ops  # noqa: F401  registers the torch.ops.tltorch_ext.* operators
from . import adaptation, distill, fewshot, finetune, ranking
from .adaptation import *  # noqa: F401,F403
from .distill import *  # noqa: F401,F403
from .fewshot import *  # noqa: F401,F403
from .finetune import *  # noqa: F401,F403
from .ranking import *  # noqa: F401,F403

__version__ = "0.1.0"
__all__ = (
    ["available_backends", "explain_backend", "get_backend", "set_backend"]
    + adaptation.__all__
    + distill.__all__
    + fewshot.__all__
    + finetune.__all__
    + ranking.__all__
)
