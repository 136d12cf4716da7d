"""A stop is prompt on the tracefs backend even under a storm that outruns the
reader: trace_pipe never runs dry then, and a read loop that waited for it to
would not see the signal until the storm ended (it took 15 s here). Each read
has a time budget; at the stop what is still unread is counted lost."""
from __future__ import annotations

import ctypes.util
import signal
import subprocess
import time

from tooling import PYTHON, Tool

STORM_S = 40
# getpid(2) as fast as Python calls it, for STORM_S seconds
STORM = f"""
import os, time
end = time.monotonic() + {STORM_S}
while time.monotonic() < end:
    for _ in range(2000):
        os.getpid()
"""


def libc() -> str:
    for path in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6"):
        try:
            open(path).close()
            return path
        except OSError:
            pass
    return ctypes.util.find_library("c")


def test_a_stop_during_a_storm_is_prompt_and_every_event_accounted():
    storm = subprocess.Popen([PYTHON, "-c", STORM])
    try:
        with Tool("probe", "--backend", "tracefs", "--json", "-p", str(storm.pid),
                  f"p:{libc()}:getpid") as t:
            assert t.wait_until(lambda: len(t.lines) > 1000, timeout=30), t.stderr
            started = time.monotonic()
            rc = t.stop(signal.SIGTERM, timeout=STORM_S)
            took = time.monotonic() - started
        assert storm.poll() is None, "the storm ended first: this run proves nothing"
    finally:
        storm.kill()
        storm.wait()
    assert rc == 0 and took < STORM_S / 4, (rc, took, t.stderr)
    [summary] = t.json("summary")
    assert summary["reason"] == "signal:SIGTERM"
    assert summary["events"] == len(t.json()) and summary["events"] > 1000
