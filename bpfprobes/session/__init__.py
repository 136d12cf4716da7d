"""The one run of every tool on every backend, and its poll loop."""
