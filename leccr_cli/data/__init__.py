"""Corpora: the on-disk layout, importers, the synthetic benchmark."""
