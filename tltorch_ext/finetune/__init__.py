"""Fine-tuning regularizers, StochNorm, BSS and strategies (SPEC §2, §5)."""
from .stochnorm import StochNorm1d, StochNorm2d, StochNorm3d, convert_model
from .sync_stochnorm import SyncStochNorm

__all__ = ["StochNorm1d", "StochNorm2d", "StochNorm3d", "convert_model"]
__all__ += ["SyncStochNorm"]
