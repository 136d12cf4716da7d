"""The BPF backend: BCC (the only `import bcc`), the program cache, perf and ring buffer readers."""
