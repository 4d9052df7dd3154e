"""Clients of the served models (tritonclient library and the OpenAI-compatible proxy)."""
