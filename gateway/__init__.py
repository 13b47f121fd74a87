"""NEAR push gateway: event streams in, Web Push notifications out."""

__version__ = "0.1.0"
