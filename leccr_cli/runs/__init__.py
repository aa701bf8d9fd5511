"""The run folder: its layout, checkpoints and logs."""
