"""The version of fxvene: a leaf module (the graph cache keys on it without importing the package)."""

__version__ = "0.1.0"
