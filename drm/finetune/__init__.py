"""Stage `finetune`: DRM and the baselines (methods.py), the shared training loop (train.py), WiSE-FT (wise.py)."""
