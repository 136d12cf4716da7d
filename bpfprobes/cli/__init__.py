"""Command-line tools: one module per tool, each argparse -> spec -> pipeline."""
