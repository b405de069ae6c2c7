"""Low-level helpers with no model knowledge (image I/O)."""
