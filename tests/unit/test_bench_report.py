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
            "rss_range": [rss[0], rss[2]], "cpu_per_m": 2.5, "ns_per_open": 1400.0}


def test_the_block_shows_the_largest_storm_with_its_range():
    rows = [row("untraced", 1_000_000, 1.0, [1.0, 1.0]),
            row("bpfprobes opensnoop", 200_000, 1.5, [1.4, 1.6]),
            row("bpfprobes opensnoop", 1_000_000, 1.18, [1.15, 1.22]),
            row("libbpf-tools opensnoop", 1_000_000, 3.4, [3.4, 3.4])]
    block = run.readme_block(rows, INFO)
    lines = block.splitlines()
    assert "commit abc1234" in lines[0] and "3 round(s)" in lines[0]
    assert "Open() storm: opensnoop and its peers, N = 1,000,000:" in lines
    assert "| bpfprobes opensnoop | 1,400 | 1.18 (1.15-1.22) | 100.00% | 0 | 0.12 s | " \
        "31 MB (30-33 MB) |" in block
    assert "| libbpf-tools opensnoop | 1,400 | 3.40 |" in block          # one value: no range
    assert "| untraced | 1,400 | 1.00 |" in block and "1.50" not in block


def test_each_storm_has_its_own_table_at_its_own_largest_size():
    rows = [row("bpfprobes opensnoop", 1_000_000, 1.18, [1.15, 1.22]),
            {**row("bpfprobes execsnoop", 20_000, 1.02, [1.01, 1.04]), "storm": "exec"},
            {**row("bpfprobes execsnoop", 5_000, 1.5, [1.5, 1.5]), "storm": "exec"}]
    lines = run.readme_block(rows, INFO).splitlines()
    heads = [ln for ln in lines if ln.endswith(":") and "N = " in ln]
    assert heads == ["Open() storm: opensnoop and its peers, N = 1,000,000:",
                     "Fork+exec storm: execsnoop and its peers, N = 20,000:"]
    exec_rows = [ln for ln in lines if ln.startswith("| bpfprobes execsnoop")]
    assert len(exec_rows) == 1 and "| 1,400 | 1.02 (1.01-1.04) |" in exec_rows[0]


def test_only_the_text_between_the_markers_is_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{run.README_START}\nold table\n{run.README_END}\nafter\n")
    assert run.write_readme(readme, "new table")
    assert readme.read_text() == (f"before\n{run.README_START}\nnew table\n"
                                  f"{run.README_END}\nafter\n")
    readme.write_text("no markers\n")
    assert not run.write_readme(readme, "new table") and readme.read_text() == "no markers\n"


def test_the_vm_table_goes_between_its_own_markers(tmp_path):
    readme = tmp_path / "README.md"
    start, end = run.VM_MARKERS
    readme.write_text(f"{run.README_START}\nhost\n{run.README_END}\n{start}\nold\n{end}\n")
    rows = [row("untraced", 50_000, 1.0, [1.0, 1.0]),
            row("bpfprobes opensnoop", 50_000, 1.3, [1.2, 1.4])]
    assert run.write_readme(readme, run.vm_readme_block(rows, INFO), run.VM_MARKERS)
    text = readme.read_text()
    assert "\nhost\n" in text and "old" not in text
    assert "| bpfprobes opensnoop | 1.30 (1.20-1.40) | 100.00% | 0 | 31 MB | 2.50 |" in text
    assert "emulated CPU: ratios only" in text and "| untraced |" not in text


def test_the_sustained_table_says_where_each_tracer_lost():
    text = run.sustained_table([
        {"tracer": "a", "kept_up": 300_000.4, "loss_at": 400_000.0, "capture_there": 0.7962},
        {"tracer": "b", "kept_up": None, "loss_at": 100_000.0, "capture_there": 0.9998},
        {"tracer": "c", "kept_up": 800_000.0, "loss_at": None, "capture_there": None}])
    assert "| a | 300,000 opens/s | 400,000/s | 79.62% |" in text
    assert f"| b | none (below {run.SUSTAINED_RATES[0]:,}/s) | 100,000/s | 99.98% |" in text
    assert "| c | 800,000 opens/s | none up to" in text
