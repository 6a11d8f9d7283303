"""Hot-path operators: torch.ops.tltorch_ext.*, one module per op family."""
from .bss import bss_penalty
from .fsp import fsp_loss, fsp_matrix
from .mk_mmd import GaussianKernels, joint_mk_mmd, mk_mmd
from .nst import nst_loss
from .stoch_norm import (
    stoch_norm,
    stoch_norm_backward_elemt,
    stoch_norm_backward_reduce,
    stoch_norm_elemt,
    stoch_norm_stats,
    update_running_stats,
)

__all__ = ["bss_penalty", "fsp_loss", "fsp_matrix", "GaussianKernels", "joint_mk_mmd", "mk_mmd",
           "nst_loss", "stoch_norm", "stoch_norm_backward_elemt", "stoch_norm_backward_reduce",
           "stoch_norm_elemt", "stoch_norm_stats", "update_running_stats"]
