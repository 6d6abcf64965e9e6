"""The stage scripts dvc.yaml and embedded/dvc.yaml run (each a thin CLI over its drm package)."""
