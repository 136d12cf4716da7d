"""The caches with the real tools and real BCC (issue 11, section 6): three
first runs at once on an empty cache, under umask 000, all work and leave one
private cache with no temporaries; the next run loads from it; a cache someone
else could write is refused with one line."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tooling import PYTHON, ROOT

from bpfprobes.kernel.btf import Btf
from bpfprobes.kernel.kallsyms import Kallsyms

# every variable that would bypass the caches under test is left out
BYPASS = ("BPFPROBES_KERNEL_HEADERS", "BPFPROBES_NO_PROGRAM_CACHE", "BPFPROBES_CACHE")


@pytest.fixture
def cache():
    d = Path(tempfile.mkdtemp(prefix="bpfprobes-host-cache-"))
    try:
        yield d / "cache"                   # not there yet: the tools create it
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start(cache: Path, *args: str) -> subprocess.Popen:
    """A tool under umask 000, as a careless root shell would run it."""
    env = {k: v for k, v in os.environ.items() if k not in BYPASS}
    env["BPFPROBES_CACHE"] = str(cache)
    return subprocess.Popen(["sh", "-c", 'umask 000; exec "$0" "$@"', PYTHON, "-m",
                             "bpfprobes.cli.main", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(p: subprocess.Popen) -> tuple[int, list[dict], str]:
    out, err = p.communicate(timeout=300)
    return p.returncode, [json.loads(line) for line in out.splitlines() if line], err


def builds_a_tree() -> bool:
    """True when headers come from our cache here (no matching ones installed)."""
    release = os.uname().release
    return not (Path("/lib/modules") / release / "build").exists() \
        and not Path("/sys/kernel/kheaders.tar.xz").exists()


def llvm_of(libbcc: str) -> str:
    """The LLVM libbcc links, as the dynamic linker says (not as the tool reads it)."""
    ldd = subprocess.run(["ldd", libbcc], text=True, capture_output=True).stdout
    m = re.search(r"libLLVM-(\d+)", ldd)
    return m.group(1) if m else "in libbcc"


def test_three_first_runs_at_once_share_one_private_cache(cache):
    procs = [start(cache, "opensnoop", "-d", "1", "--json") for _ in range(3)]   # all at once
    runs = [finish(p) for p in procs]
    for rc, lines, err in runs:
        assert rc == 0, err
        assert lines[0]["type"] == "meta" and lines[-1]["type"] == "summary", err
        assert lines[-1]["reason"] == "duration"
    left = [p for p in cache.rglob("*") if ".tmp" in p.name]
    assert left == [], left
    # umask 000 changed nothing: private directories, private files, all root's
    for p in [cache, *cache.rglob("*")]:
        st = os.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o700, p
        elif stat.S_ISREG(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o600, p
        else:
            assert stat.S_ISLNK(st.st_mode) and (cache / "headers") in p.parents, p
        assert st.st_uid == 0, p
    if builds_a_tree():
        [tree] = (cache / "headers").iterdir()
        assert (tree / ".bpfprobes-tree").is_file()
        assert (tree / "include" / "uapi" / "linux" / "ptrace.h").is_file()
    assert len(list((cache / "programs").glob("*.json"))) == 1
    tools = json.loads((cache / "programs" / "toolchain.stamp").read_text())
    import bcc                              # noqa: PLC0415 - the versions the key must hold
    [libbcc] = [f for f in tools["files"] if os.path.basename(f).startswith("libbcc.so")]
    assert (tools["bcc"], tools["llvm"]) == (bcc.__version__, llvm_of(libbcc))
    # the kernel's answers they asked, saved for this boot, are the kernel's own
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    [saved] = (cache / "facts").iterdir()
    assert saved.name == f"{boot}.json"
    answers = json.loads(saved.read_text())["answers"]
    assert answers, saved
    for key, value in answers.items():
        kind, _, what = key.partition(":")
        if kind == "symbol":
            assert Kallsyms().exists(what) == value, key
        else:
            assert Btf.load().member_offset(*what.split(".")) == value, key
    # and the next start loads what they saved
    rc, lines, err = finish(start(cache, "opensnoop", "-d", "0.3", "--json"))
    assert rc == 0 and lines[0]["program"] == "cached", err


@pytest.mark.parametrize("how", ["mode 0777", "another owner"])
def test_a_cache_someone_else_could_write_is_refused_with_one_line(cache, how):
    cache.mkdir(mode=0o700)
    if how == "mode 0777":
        os.chmod(cache, 0o777)
    else:
        os.chown(cache, 65534, 65534)
    rc, lines, err = finish(start(cache, "opensnoop", "-d", "1", "--json"))
    assert rc == 1 and "Traceback" not in err, err
    first, *rest = err.splitlines()
    assert re.fullmatch(rf"opensnoop: error: {cache} .*: refusing to trust it", first), err
    assert rest and rest[0].startswith("opensnoop: hint: remove it"), err
    assert list(cache.iterdir()) == [] and lines == []
