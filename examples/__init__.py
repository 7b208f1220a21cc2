"""Worked examples: a user's own split model (docs/CONFIGURATION.md, "Bring your own model")."""
