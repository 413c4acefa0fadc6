"""Training loop, EMA, schedules, sampler, run logs, epoch line, sample grids, validation."""
