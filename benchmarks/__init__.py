"""Benchmarks: scale.py (the four ratios of docs/scale.md) and gpu_check.sh (the prepared GPU check)."""
