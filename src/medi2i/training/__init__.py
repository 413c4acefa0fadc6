"""Training loop, EMA, schedules, checkpoints and diagnostics (issue 4)."""
