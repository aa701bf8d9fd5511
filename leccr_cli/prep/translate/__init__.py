"""Machine translation of captions and descriptions."""
