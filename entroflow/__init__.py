"""entroflow core: algorithms as plain functions over tensors and Arrow tables (no Prefect here)."""

__version__ = "0.1.0"
