"""Generic infrastructure: crash-safe files, processes and devices, consoles, language codes."""
