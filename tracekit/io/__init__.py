"""Adapters at the edges: files in, files out. The engine and analysis never import these."""
