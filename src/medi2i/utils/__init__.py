"""Small shared helpers (logging set-up, atomic file writes)."""
