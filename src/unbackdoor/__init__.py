"""unbackdoor: remove textual backdoors from trained classifiers by Robust Gradient Ascent."""

__version__ = "0.1.0"
