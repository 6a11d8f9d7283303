"""ranking: transferability estimation, to pick a source model before fine-tuning it. Each score
takes the target data's features (or a source classifier's outputs) and labels and returns one
number, higher meaning the model is expected to transfer better (docs/api_ranking.md)."""
from .h_score import h_score
from .leep import leep, nce
from .logme import log_me

__all__ = ["log_me", "leep", "nce", "h_score"]
