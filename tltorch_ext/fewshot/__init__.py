"""fewshot: prototypical networks and episodic sampling."""
from .prototypical import EpisodicSampler, PrototypicalNetwork, class_prototypes

__all__ = ["PrototypicalNetwork", "EpisodicSampler", "class_prototypes"]
