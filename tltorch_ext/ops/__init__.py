"""Hot-path operators: torch.ops.tltorch_ext.*, one module per op family."""
from .bss import bss_penalty
from .stoch_norm import stoch_norm, update_running_stats

__all__ = ["bss_penalty", "stoch_norm", "update_running_stats"]
