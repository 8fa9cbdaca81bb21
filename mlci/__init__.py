"""mlci: commit-to-production ML pipelines."""
__version__ = "0.1.0"
__all__ = ["__version__"]
