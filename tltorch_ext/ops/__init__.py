"""Hot-path operators: torch.ops.tltorch_ext.*, one module per op family."""
from .stoch_norm import stoch_norm, update_running_stats

__all__ = ["stoch_norm", "update_running_stats"]
