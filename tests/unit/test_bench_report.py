"""bench/run.py's report: the README's cost table is written by the run, between
its markers, with medians and the range over rounds (no figure typed by hand)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

INFO = {"date": "2026-12-02 08:00 UTC", "kernel": "6.18.44", "commit": "abc1234",
        "rounds": 3, "cpu": "Some CPU, 2 CPUs"}


def row(tracer, n, ratio, ratios, capture=1.0, rss=(30.0, 31.0, 33.0)):
    return {"tracer": tracer, "N": n, "ratio": ratio, "ratio_range": ratios,
            "capture": capture, "lost": 0, "live_s": 0.12, "rss_mb": rss[1],
            "rss_range": [rss[0], rss[2]], "cpu_per_m": 2.5}


def test_the_block_shows_the_largest_storm_with_its_range():
    rows = [row("untraced", 1_000_000, 1.0, [1.0, 1.0]),
            row("bpfprobes opensnoop", 200_000, 1.5, [1.4, 1.6]),
            row("bpfprobes opensnoop", 1_000_000, 1.18, [1.15, 1.22]),
            row("libbpf-tools opensnoop", 1_000_000, 3.4, [3.4, 3.4])]
    block = run.readme_block(rows, INFO)
    lines = block.splitlines()
    assert "commit abc1234" in lines[0] and "3 round(s)" in lines[0]
    assert "Open() storm: opensnoop and its peers, N = 1,000,000:" in lines
    assert "| bpfprobes opensnoop | 1.18 (1.15-1.22) | 100.00% | 0 | 0.12 s | 31 MB (30-33 MB) |" \
        in block
    assert "| libbpf-tools opensnoop | 3.40 |" in block          # one value: no range
    assert "| untraced |" not in block and "1.50" not in block


def test_each_storm_has_its_own_table_at_its_own_largest_size():
    rows = [row("bpfprobes opensnoop", 1_000_000, 1.18, [1.15, 1.22]),
            {**row("bpfprobes execsnoop", 20_000, 1.02, [1.01, 1.04]), "storm": "exec"},
            {**row("bpfprobes execsnoop", 5_000, 1.5, [1.5, 1.5]), "storm": "exec"}]
    lines = run.readme_block(rows, INFO).splitlines()
    heads = [ln for ln in lines if ln.endswith(":") and "N = " in ln]
    assert heads == ["Open() storm: opensnoop and its peers, N = 1,000,000:",
                     "Fork+exec storm: execsnoop and its peers, N = 20,000:"]
    exec_rows = [ln for ln in lines if ln.startswith("| bpfprobes execsnoop")]
    assert len(exec_rows) == 1 and "| 1.02 (1.01-1.04) |" in exec_rows[0]


def test_only_the_text_between_the_markers_is_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{run.README_START}\nold table\n{run.README_END}\nafter\n")
    assert run.write_readme(readme, "new table")
    assert readme.read_text() == (f"before\n{run.README_START}\nnew table\n"
                                  f"{run.README_END}\nafter\n")
    readme.write_text("no markers\n")
    assert not run.write_readme(readme, "new table") and readme.read_text() == "no markers\n"
