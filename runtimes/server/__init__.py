"""The Open Inference Protocol v2 server (no torch)."""
