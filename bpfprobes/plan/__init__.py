"""What the user asked, checked against the kernel: probe specs, filters, payload layouts, plans, a run's settings."""
