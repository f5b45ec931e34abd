"""The config: schema (the contract), strict YAML reading, validation, the typed result."""
from trainer.config.model import Config
from trainer.config.validate import load_config, parse_config

__all__ = ["Config", "load_config", "parse_config"]
