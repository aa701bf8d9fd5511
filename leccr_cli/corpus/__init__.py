"""Corpora: the folder format, frame features, importers and the synthetic benchmark."""
