"""Events as people and pipelines read them: bytes to events, columns, ftrace lines, JSON lines, summaries."""
