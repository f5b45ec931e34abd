"""trainer: YAML-driven fine-tuning of open language models."""

__version__ = "0.1.0"
