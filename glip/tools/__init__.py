"""Command implementations behind the CLI (the CLI itself only parses arguments)."""
