"""Serving GOT over HTTP: the service (jobs onto the engine) and the OpenAI-compatible API on FastAPI."""
