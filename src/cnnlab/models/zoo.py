"""Placeholder for the larger families (filled by the model-zoo work)."""
