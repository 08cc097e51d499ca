"""memoryd: the memory daemon for multi-agent LLM systems."""

from __future__ import annotations

__version__ = "0.1.0"
