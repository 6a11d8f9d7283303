"""distill."""
__all__ = []
