"""A run's settings are data in its program's config map (runconfig.py), on
this kernel: the user's filter value is the one compared, whatever its bits,
on a compiled start and on a start from the program cache alike.

Before, run-time values were compiled as magic immediates (0x5EED0001 for the
tool's own PID) and patched into cached bytecode, and a user's own filter
that happened to equal a placeholder was rewritten into another value."""
from __future__ import annotations

import errno
import os
import subprocess

from tooling import Tool, Workload, settle, unique

PLACEHOLDER = 0x5EED0001          # what SKIP_PID was compiled as, and patched over


def test_a_filter_equal_to_an_old_placeholder_is_the_users_on_every_start():
    for start in ("first", "second"):      # the second start is served by the program cache
        missing = f"/tmp/{unique('uidfilter')}"
        with Tool("opensnoop", "--json", "-u", hex(PLACEHOLDER)) as t:
            subprocess.run(["cat", missing], user=PLACEHOLDER, capture_output=True, timeout=30)
            subprocess.run(["cat", missing], capture_output=True, timeout=30)  # root: not shown
            settle()
        [meta] = t.json("meta")
        assert meta["filters"] == {"uid": PLACEHOLDER}
        hits = [(e["uid"], e["err"], e["comm"]) for e in t.json() if e["path"] == missing]
        assert hits == [(PLACEHOLDER, errno.ENOENT, "cat")], (start, meta.get("program"))
    assert meta.get("program") == "cached"


def test_o_rdonly_alone_keeps_only_read_only_opens(tmp_path):
    """-f O_RDONLY (the flag with no bit) filters on its own too."""
    ro, wo = str(tmp_path / unique("ro")), str(tmp_path / unique("wo"))
    w = Workload("bpfp-rdonly", f"open:{ro}:O_RDONLY:", f"open:{wo}:O_WRONLY|O_CREAT:0600")
    with Tool("opensnoop", "--json", "-f", "O_RDONLY", "-p", str(w.pid)) as t:
        results = w.go()
        settle()
    assert results[0] < 0 and results[1] >= 3 and os.path.exists(wo)
    assert [(e["path"], e["err"]) for e in t.json()] == [(ro, errno.ENOENT)]


def test_without_a_user_filter_every_user_is_traced():
    """No -u: root (uid 0) and any other user alike; "no filter" is not uid 0."""
    missing = f"/tmp/{unique('anyuser')}"
    with Tool("opensnoop", "--json") as t:
        subprocess.run(["cat", missing], user=PLACEHOLDER, capture_output=True, timeout=30)
        subprocess.run(["cat", missing], capture_output=True, timeout=30)
        settle()
    assert sorted(e["uid"] for e in t.json() if e["path"] == missing) == [0, PLACEHOLDER]
    with Tool("execsnoop", "--json", "-x") as t:
        subprocess.run(["/bin/true", missing], user=PLACEHOLDER, timeout=30)
        settle()
    assert [e["uid"] for e in t.json() if e["argv"][1:] == [missing]] == [PLACEHOLDER]
