"""One thin module per command: parse options, call the core, print (errors: `cli/errors.py`)."""
