"""The `leccr` command line."""
