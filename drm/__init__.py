"""Dual Risk Minimization (DRM) for robust fine-tuning of CLIP-like models.

The library behind the pipeline: stages/ (DVC) and pipeline/ (Prefect) both call
these functions; nothing here reads argv or files it was not given.
"""

__version__ = "0.1.0"
