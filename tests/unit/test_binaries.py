"""Binaries by name (kernel/binaries.py) and how the spec grammar uses them: the
rule's order, library names, a process's own mappings, on made-up files."""
import pytest

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel import arch, binaries
from bpfprobes.plan import spec


@pytest.mark.parametrize("basename, name, want", [
    ("libc.so.6", "libc", True), ("libc.so.6", "c", True), ("libc.so.6", "libc.so.6", True),
    ("libcap.so.2", "c", False), ("libcap.so.2", "cap", True), ("bash", "bash", True),
    ("bashbug", "bash", False), ("libstdc++.so.6", "stdc++", True), ("libc.so.6", "lib", False)])
def test_library_names(basename, name, want):
    assert binaries.library_matches(basename, name) is want


def test_a_process_mapping(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "maps").write_text(
        "55d0-55d1 r-xp 00000000 08:01 1 /usr/bin/python3.11\n"
        "7f00-7f01 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f02-7f03 r-xp 00000000 08:01 3 /tmp/libgone.so (deleted)\n"
        "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n")
    assert binaries.mapped_by(42, "c", tmp_path) == \
        f"{tmp_path}/42/root/usr/lib/x86_64-linux-gnu/libc.so.6"
    assert binaries.mapped_by(42, "python3.11", tmp_path).endswith("/root/usr/bin/python3.11")
    # replaced or removed since: the mapping itself, not whatever the path names now
    assert binaries.mapped_by(42, "gone", tmp_path) == f"{tmp_path}/42/map_files/7f02-7f03"
    assert binaries.mapped_by(43, "c", tmp_path) is None             # no such process


def test_path_lookup_takes_absolute_directories_only(tmp_path, monkeypatch):
    """A root tracer run from a directory someone else writes must not pick its `bash`."""
    (tmp_path / "bash").write_text("#!/bin/sh\n")
    (tmp_path / "bash").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f".::{tmp_path.name}:/usr/bin:/bin")
    assert binaries.on_path("bash") in ("/usr/bin/bash", "/bin/bash")
    monkeypatch.setenv("PATH", f"{tmp_path}")
    assert binaries.on_path("bash") == f"{tmp_path}/bash"        # absolute: as asked


def test_names_no_file_system_takes():
    assert binaries.is_kernel_module("b" * 5000) is False
    with pytest.raises(UsageError, match="255 bytes at most"):
        binaries.Resolver()("b" * 300)


def test_the_spec_grammar_asks_for_names_and_keeps_modules():
    found = {"bash": "/usr/bin/bash", "libc.so.6": "/lib/libc.so.6"}
    s = spec.parse("r:bash:readline +0($retval):string", arch.X86_64, found.get)
    assert (s.kind, s.path, s.symbol, str(s.args[0].type)) == \
        ("uretprobe", "/usr/bin/bash", "readline", "ustring")     # a uprobe's strings are user's
    assert spec.parse("p:libc.so.6:malloc", arch.X86_64, found.get).path == "/lib/libc.so.6"
    k = spec.parse("p:ext4:ext4_sync_fs", arch.X86_64, found.get)           # no binary: module
    assert (k.kind, k.module, k.symbol) == ("kprobe", "ext4", "ext4_sync_fs")
    assert spec.parse("p:bash:readline", arch.X86_64).kind == "kprobe"      # no resolver given


def test_a_name_that_is_nothing(monkeypatch):
    monkeypatch.setattr(binaries, "is_kernel_module", lambda name: False)
    monkeypatch.setattr(binaries, "on_path", lambda name: None)
    monkeypatch.setattr(binaries, "loader_cache", lambda name: None)
    r = binaries.Resolver(pid=7)
    monkeypatch.setattr(binaries, "mapped_by", lambda pid, name: None)
    with pytest.raises(UsageError, match="'zz' is no kernel module, no program on PATH and no "
                                         "library in the loader's cache, not mapped by process 7"):
        r("zz")


def test_the_order_module_then_mapped_then_path_then_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(binaries, "mapped_by", lambda pid, name: calls.append("maps"))
    monkeypatch.setattr(binaries, "on_path", lambda name: calls.append("path") or "/b/x")
    monkeypatch.setattr(binaries, "loader_cache", lambda name: calls.append("cache"))
    monkeypatch.setattr(binaries, "is_kernel_module", lambda name: name == "mod")
    r = binaries.Resolver(pid=5)
    assert r("mod") is None and calls == []
    assert r("x") == "/b/x" and calls == ["maps", "path"]
    assert r("x") == "/b/x" and calls == ["maps", "path"]      # once a name
    assert r.notes == ["x: the program on PATH, /b/x (no kernel module x)"]
