"""adaptation."""
__all__ = []
