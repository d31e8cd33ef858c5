"""gnut: a Gnutella 0.6 servent in Python with a Cython hot path."""

__version__ = "0.1.0"
