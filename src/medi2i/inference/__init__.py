"""Prediction, test-time augmentation and tiling (issue 5)."""
