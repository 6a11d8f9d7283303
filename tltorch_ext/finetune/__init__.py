"""finetune."""
__all__ = []
