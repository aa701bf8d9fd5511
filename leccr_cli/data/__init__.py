"""From a corpus to model batches: datasets, transforms, collation."""
