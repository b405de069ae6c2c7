"""Model zoo and conversion of official GLIP checkpoints."""
