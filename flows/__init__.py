"""Prefect flows: only the call graph of the stage tasks."""
