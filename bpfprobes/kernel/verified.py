"""The kernels this release's VM tier passed on, as `make test-kernels` recorded
them (verified.json beside this file, written by tests/vm/verified.py with the
README's "Verified on" table): doctor says whether the running kernel's series
and architecture are among them."""
from __future__ import annotations

import json
import re
from pathlib import Path

RECORD = Path(__file__).with_name("verified.json")


def rows(path: Path = RECORD) -> list[dict]:
    """The record's rows; none when it is missing or unreadable (never an error)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []


def series(release: str) -> str:
    """'6.1' of 6.1.0-57-amd64, '6.12' of 6.12.117+deb12-amd64."""
    m = re.match(r"(\d+\.\d+)", release)
    return m.group(1) if m else release


def matching(release: str, arch: str, recorded: list[dict]) -> dict | None:
    """The row (of `rows()`) of this kernel's series on this arch, if the tier ran there."""
    return next((r for r in recorded if series(str(r.get("release", ""))) == series(release)
                 and r.get("arch") == arch), None)


def listed(recorded: list[dict]) -> list[str]:
    """'6.1 x86_64' for each row: what the record covers."""
    return [f"{series(str(r.get('release', '')))} {r.get('arch')}" for r in recorded]


def summary(row: dict) -> str:
    scope = "whole VM tier" if row.get("whole") else "VM smoke set"
    return (f"{row.get('release')} ({row.get('arch')}): {scope}, {row.get('passed')} of "
            f"{row.get('tests')} passed, {row.get('date')} (make test-kernels)")
