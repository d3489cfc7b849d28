"""Small helpers importable by every layer (logging, time)."""
