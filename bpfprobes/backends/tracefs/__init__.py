"""The tracefs backend: our own kprobe/uprobe events and trace instance, read from trace_pipe; run ownership."""
