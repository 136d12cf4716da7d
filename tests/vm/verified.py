"""Write the README's "Verified on" table, and the record doctor reads
(bpfprobes/kernel/verified.json), from the last VM run's record
(build/vm/verified.json, written by tests/vm/conftest.py), and print the table.
`make test-kernels` runs it after the whole VM tier on every kernel: the
table says what ran and passed there, never what someone typed."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels  # noqa: E402

README = kernels.ROOT / "README.md"
SHIPPED = kernels.ROOT / "bpfprobes" / "kernel" / "verified.json"
SHIPPED_KEYS = ("kernel", "release", "arch", "tests", "passed", "whole", "date")
START, END = "<!-- verified-on: written by make test-kernels -->", "<!-- verified-on: end -->"


def table(rows: list[dict]) -> str:
    lines = ["| kernel | release | arch | QEMU machine | VM tests passed | time | date |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        scope = "whole tier" if r["whole"] else "smoke set"
        lines.append(f"| {r['kernel']} | {r['release']} | {r['arch']} | {r['machine']} | "
                     f"{r['passed']} of {r['tests']} ({scope}) | {r['seconds'] // 60} min "
                     f"{r['seconds'] % 60:02d} s | {r['date']} |")
    return "\n".join(lines)


def main() -> int:
    if not kernels.BUILD.joinpath("verified.json").is_file():
        print("verified: no build/vm/verified.json: run the VM tier first", file=sys.stderr)
        return 1
    rows = json.loads(kernels.BUILD.joinpath("verified.json").read_text())
    text = table(rows)
    print(text)
    readme = README.read_text()
    block = f"{START}\n{text}\n{END}"
    new, n = re.subn(re.escape(START) + r".*?" + re.escape(END), lambda _: block, readme,
                     flags=re.S)
    if n != 1:
        print(f"verified: README.md has no {START} ... {END} block", file=sys.stderr)
        return 1
    README.write_text(new)
    SHIPPED.write_text(json.dumps([{k: r[k] for k in SHIPPED_KEYS} for r in rows], indent=1) + "\n")
    return 0 if all(r["passed"] == r["tests"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
