"""The loader: worker tier, client-side rebatching, transfer, and exact resume."""

from .dataloader import DataLoader

__all__ = ["DataLoader"]
