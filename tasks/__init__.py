"""Prefect tasks: one module per stage, thin wrappers that add caching, retries and tracking
around the core functions of :mod:`entroflow`."""
