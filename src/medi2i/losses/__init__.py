"""Losses: reconstruction, adversarial (+ feature matching, R1), regularisers (issue 3)."""
