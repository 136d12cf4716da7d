"""Each tool's knowledge as a library: its options as a typed dataclass, its
plan, decoder and columns, and its run through the session. cli/ only turns
argv into those options."""
