"""What attaches, detaches and reads: BPF programs (bpf/) or the kernel's own dynamic events (tracefs/)."""
