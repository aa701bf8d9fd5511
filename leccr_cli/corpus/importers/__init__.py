"""Importers: Multi30K, the NRCCR layout, folders of images, descriptions written elsewhere."""
