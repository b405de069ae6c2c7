"""Model-zoo configuration files (package data)."""
