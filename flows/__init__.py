"""Prefect flows: the DAGs of entroflow."""
