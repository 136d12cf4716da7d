"""Answers about the running kernel image that hold until it reboots, kept
between runs: does a symbol exist, where is a struct member.

Why: a ready tool asks only a handful (its syscall entry symbols, a few BTF
offsets), yet each first question reads all of /proc/kallsyms (~0.1 s of
kernel time, 10 MB) or indexes the whole vmlinux BTF (~0.1 s, 5 MB): most of a
warm start, and most of its peak memory. The answers cannot change without a
reboot (the kernel image's symbols and types are fixed; modules, which come
and go, are never asked here), so they are saved per boot id, beside the
program cache and as trusted as it (safefs: a directory of ours alone).

A saved answer is used only after it passes its kind's check (a symbol name,
an offset in range); anything else in the file is ignored and asked afresh.
Files of earlier boots are removed when a new one is written.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable

from bpfprobes.base import safefs
from bpfprobes.kernel.headers import CACHE

DIR = CACHE / "facts"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
FORMAT = 1
_BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SYMBOL = re.compile(r"[A-Za-z_.$][A-Za-z0-9_.$]{0,254}")
_MEMBER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _offset(value: object) -> bool:
    return value is None or (type(value) is int and 0 <= value < 1 << 20)


# kind -> (what a key must look like, what a saved answer must be)
KINDS: dict[str, tuple[Callable[[str], bool], Callable[[object], bool]]] = {
    "symbol": (lambda key: _SYMBOL.fullmatch(key) is not None,
               lambda value: type(value) is bool),
    "offset": (lambda key: all(_MEMBER.fullmatch(p) for p in key.split(".")) and
               key.count(".") == 1, _offset),
}


def boot_id() -> str | None:
    """This boot's id (None where the kernel does not say, or says it oddly)."""
    try:
        text = BOOT_ID.read_text().strip()
    except OSError:
        return None
    return text if _BOOT_ID.fullmatch(text) else None


class Facts:
    """This boot's saved answers; `ask` returns one, computing and saving it
    when it is not there. Without a boot id or a usable directory, nothing is
    saved and every answer is computed (as before this existed)."""

    def __init__(self, release: str, directory: Path = DIR) -> None:
        self.release = release
        self.dir = directory
        self.boot = boot_id()
        self._answers: dict[str, object] | None = None

    @property
    def _name(self) -> str:
        return f"{self.boot}.json"

    def _load(self) -> dict[str, object]:
        if self._answers is None:
            self._answers = {}
            if self.boot is not None:
                try:
                    with safefs.opened_dir(self.dir, private_from=self.dir.parent,
                                           create=False) as fd:
                        raw = safefs.read_file(fd, self._name, limit=1 << 20)
                except (OSError, safefs.UnsafePath):
                    raw = None
                self._answers = self._valid(raw)
        return self._answers

    def _valid(self, raw: bytes | None) -> dict[str, object]:
        try:
            obj = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):        # not JSON, or nested to exhaust us
            return {}
        if not isinstance(obj, dict) or obj.get("format") != FORMAT \
                or obj.get("release") != self.release or obj.get("boot") != self.boot \
                or not isinstance(obj.get("answers"), dict):
            return {}
        out = {}
        for key, value in obj["answers"].items():
            kind, _, what = key.partition(":")
            if kind in KINDS and KINDS[kind][0](what) and KINDS[kind][1](value):
                out[key] = value
        return out

    def ask(self, kind: str, what: str, compute: Callable[[], object]) -> object:
        """The answer to `kind` about `what` (KINDS), saved for this boot."""
        key_ok, value_ok = KINDS[kind]
        key = f"{kind}:{what}"
        answers = self._load()
        if key in answers:
            return answers[key]
        value = compute()
        if key_ok(what) and value_ok(value):
            answers[key] = value
            self._save()
        return value

    def _save(self) -> None:
        if self.boot is None:
            return
        data = json.dumps({"format": FORMAT, "boot": self.boot, "release": self.release,
                           "answers": self._answers}, sort_keys=True).encode()
        try:
            with safefs.opened_dir(self.dir, private_from=self.dir.parent) as fd:
                safefs.sweep_temps(fd, older_than=600)
                safefs.write_file(fd, self._name, data)
                for name in os.listdir(fd):          # earlier boots' answers
                    if name.endswith(".json") and name != self._name \
                            and _BOOT_ID.fullmatch(name.removesuffix(".json")):
                        os.unlink(name, dir_fd=fd)
        except (OSError, safefs.UnsafePath):
            pass            # read-only or not ours alone: the answer is still right, unsaved
