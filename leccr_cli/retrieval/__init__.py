"""Retrieval: metrics, evaluation, the index and search."""
