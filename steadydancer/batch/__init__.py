"""Batch generation: a manifest of (image, video) pairs over one or many processes (docs/batch.md)."""
