"""The embedded synthetic benchmarks (images and videos)."""
