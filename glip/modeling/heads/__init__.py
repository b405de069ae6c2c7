"""Task heads on the fused trunk."""
