"""Training loop, EMA, schedules, checkpoints and diagnostics."""
