"""Facts about the running kernel and machine, each from evidence: architecture tables, BTF, symbols, ELF, headers, features, attach policy, interrupts."""
