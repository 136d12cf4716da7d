"""open(2) flag names <-> values, as this machine's libc defines them."""
from __future__ import annotations

import functools
import os

# Names BCC's opensnoop -f accepts; values from the os module (they differ by arch).
NAMES = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC",
         "O_APPEND", "O_NONBLOCK", "O_DSYNC", "O_ASYNC", "O_DIRECT", "O_LARGEFILE",
         "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_SYNC", "O_PATH", "O_TMPFILE")
FLAGS: dict[str, int] = {n: getattr(os, n) for n in NAMES if hasattr(os, n)}
FLAGS.setdefault("O_ASYNC", 0o20000)
FLAGS.setdefault("O_LARGEFILE", 0o100000)
ACCMODE = 3
_ACCESS = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}


def parse(name: str) -> int:
    """'O_WRONLY' or 'wronly' -> its value; KeyError for an unknown name."""
    key = name.upper()
    key = key if key.startswith("O_") else "O_" + key
    return FLAGS[key]


# multi-bit flags (O_SYNC includes O_DSYNC, O_TMPFILE includes O_DIRECTORY) first
_BY_WIDTH = sorted(((n, v) for n, v in FLAGS.items() if v & ~ACCMODE),
                   key=lambda kv: -bin(kv[1]).count("1"))


@functools.lru_cache(maxsize=1024)   # a storm repeats a handful of flag sets
def describe(flags: int) -> str:
    """0o101 -> 'O_WRONLY|O_CREAT'; bits we have no name for stay in octal."""
    names = [_ACCESS.get(flags & ACCMODE, f"0{flags & ACCMODE:o}")]
    rest = flags & ~ACCMODE
    for name, value in _BY_WIDTH:
        if rest & value == value:
            names.append(name)
            rest &= ~value
    if rest:
        names.append(f"0{rest:o}")
    return "|".join(names)
