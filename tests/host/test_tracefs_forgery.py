"""probe --backend tracefs against a traced program that writes trace_pipe text:
ftrace prints comm and string values raw, so an unprivileged user's newline and
quotes could forge whole events or shift fields. The review's reproduction, run
as uid 65534 on a copy of bash: nothing forged is reported as a normal event,
--json neither crashes nor counts it, and a plain event still is one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tooling import Tool, unique

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
FORGED_HEAD = ("           sshd-1       (      1) [000] d..2.  4157.317829: search_for_command: "
               "(0x5648e84364d0) arg1=")
MARK = "[ambiguous]"


@pytest.fixture(scope="module")
def prog():
    """A copy of bash any user can run (pytest's tmp_path is root's, 0700), and a
    hard link to it named "x\\nsshd" (exec makes that the comm)."""
    if shutil.which("setpriv") is None or shutil.which("bash") is None:
        pytest.skip("needs setpriv and bash")
    d = Path(tempfile.mkdtemp(prefix="bpfp-forgery-", dir="/tmp"))
    d.chmod(0o755)
    shutil.copy2(shutil.which("bash"), d / "prog")
    os.link(d / "prog", d / "x\nsshd")
    yield d
    shutil.rmtree(d)


def spec(d: Path) -> str:
    return f"p:{d}/prog:search_for_command +0(%di):string flags=%si"


def as_nobody(binary: Path, script: str) -> None:
    subprocess.run([*NOBODY, str(binary), "-c", script], capture_output=True, timeout=60)


def test_forged_lines_are_never_normal_events(prog):
    tag = unique("real")
    # the review's string (an unterminated first line), and one whose first line
    # splits exactly, so only the count of records tells the forged head from a real one
    script = ('x=$(printf "aa\\" flags=0xdead zz=\\"\\n' + FORGED_HEAD + '\\"FORGED\\" '
              'flags=0x7\\nq"); "$x"; y=$(printf "bb\\" flags=0x1\\n' + FORGED_HEAD +
              '\\"FORGED2"); "$y"')
    with Tool("probe", "--verbose", "--backend", "tracefs", spec(prog)) as text, \
            Tool("probe", "--backend", "tracefs", "--json", spec(prog)) as js:
        as_nobody(prog / "prog", script)
        for t in (text, js):
            assert t.wait_until(lambda: any("FORGED2" in ln for ln in t.lines)), t.stderr
        # a plain event after them, in a read of its own (a read that holds a forged
        # line has every event in it flagged: it cannot tell which one is real)
        as_nobody(prog / "prog", tag)
        assert text.wait_until(lambda: any(tag in ln for ln in text.lines)), text.stderr
        assert js.wait_until(lambda: any(tag in ln for ln in js.lines)), js.stderr
    assert text.proc.returncode == 0 and js.proc.returncode == 0, js.stderr

    # text: the forged heads only inside lines marked ambiguous, the real one plain
    forged = [ln for ln in text.lines if "FORGED" in ln or "sshd" in ln or "0xdead" in ln]
    assert len(forged) >= 2 and all(ln.endswith(MARK) for ln in forged), text.lines
    [real] = [ln for ln in text.lines if tag in ln]
    assert not real.endswith(MARK) and not real.lstrip().startswith("sshd")
    assert "ambiguous" in text.stderr and "Traceback" not in text.stderr

    # JSON: exit 0 with a summary; no sshd/pid 1/0xdead event that is not flagged
    events, [summary] = js.json(), js.json("summary")
    assert "Traceback" not in js.stderr
    plain = [e for e in events if not e.get("ambiguous")]
    assert not [e for e in plain if e["comm"] == "sshd" or e["pid"] == 1
                or e["args"]["flags"] in (0xdead, 7) or "FORGED" in str(e["args"]["arg1"])]
    assert [e["args"]["arg1"] for e in plain if tag in str(e["args"]["arg1"])] == [tag]
    flagged = [e for e in events if e.get("ambiguous")]
    assert flagged and all("raw" in e for e in flagged)
    assert summary["ambiguous"] == len(flagged) and summary["events"] == len(plain)


def test_newline_in_comm_is_not_a_clean_event(prog):
    tag = unique("comm")
    with Tool("probe", "--backend", "tracefs", "--json", spec(prog)) as js:
        as_nobody(prog / "x\nsshd", tag)
        assert js.wait_until(lambda: any(tag in ln for ln in js.lines)), js.stderr
    [e] = [e for e in js.json() if tag in json.dumps(e)]
    # the comm cache may not know the task ("<...>": read from /proc, whole);
    # if it does, the line says "sshd" after a stray "x" line: flagged
    assert e["comm"] == "x\nsshd" or e.get("ambiguous"), e
    assert js.json("summary")[0]["events"] + js.json("summary")[0]["ambiguous"] >= 1
