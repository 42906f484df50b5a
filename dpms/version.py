"""The version of dpms (also in pyproject.toml); it enters every benchmark cell's key."""

__version__ = "0.1.0"
