"""The web view: pages, JSON API and probes, on one aiohttp server (see ``server``)."""

from .server import serving

__all__ = ["serving"]
