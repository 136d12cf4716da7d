"""The one writer of BPF C: bpf_c/ sources specialised by -D flags, and the probe tool's generated functions."""
