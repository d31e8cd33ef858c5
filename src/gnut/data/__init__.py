"""Data files shipped with gnut (read with importlib.resources)."""
