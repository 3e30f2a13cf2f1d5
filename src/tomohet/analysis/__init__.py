"""Analysis of finished runs: plots (FSC curves, central sections)."""

__all__ = ["plots"]
