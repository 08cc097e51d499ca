"""Client for memoryd, the memory daemon for multi-agent LLM systems."""
