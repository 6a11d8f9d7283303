"""fewshot."""
__all__ = []
