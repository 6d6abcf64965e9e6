"""Stage `evaluate`: ID/OOD metrics as the benchmarks define them, per head (df, cd, dual inference)."""
