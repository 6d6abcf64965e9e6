"""Data sources: one interface for the embedded world and real datasets
(base.py: DataSource and Split; registry.py: open_source by name).

A DataSource knows its class names, its splits (each with a role: train, id or ood) and
how to load a split as a `Split`: a torch Dataset yielding (image tensor, label) through
the model's own transform, plus a metadata frame (one row per sample, same order) with a
stable string `id`, the label `y` and group columns for worst-group metrics. Images are
read lazily, per item, so the same code path serves DataLoader workers on real data.
"""
