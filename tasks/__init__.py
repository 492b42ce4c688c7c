"""Prefect task wrappers, one module per stage: thin adapters over `codeparrot`."""
