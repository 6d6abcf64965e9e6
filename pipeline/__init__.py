"""Orchestration over the DVC pipeline: the Prefect flow, DVC experiments, presets."""
