"""Worked examples: a user's own split model (README, "Bring your own model")."""
