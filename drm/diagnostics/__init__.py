"""Stage `diagnostics`: measures the embedded world's premises (skipped for real data)."""
