"""bpfprobes: kprobes, kretprobes, uprobes and tracepoints from Python, through BCC."""

__version__ = "0.1.0"
