"""The one error hierarchy: what a peer broke (Remote) versus how we misused the API (Local)."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every protocol error gnut raises."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol or one of our limits."""


class LocalProtocolError(ProtocolError):
    """We (the caller) asked for something the protocol does not allow."""


class FastPathMissing(ImportError):
    """The compiled hot path (gnut._fastpath) cannot be imported and the pure twin was not asked for."""
