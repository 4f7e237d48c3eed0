"""Programs that talk to the daemon over its socket: the Python client and the `llm` plugin."""
