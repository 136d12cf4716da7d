"""The caches root writes and later trusts (issue 11, section 6): private modes
whatever the umask, no symlink followed or written through, a directory someone
else could change refused, a cache key that changes with BCC, LLVM and the
headers' content, and trees built once by concurrent first runs.

Every test works under a fresh 0700 directory of its own (mkdtemp), never under
the checkout: the suite may run from a clone anywhere."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import stat
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from bpfprobes.backends.bpf import progcache
from bpfprobes.base import safefs
from bpfprobes.gen.codegen import Program
from bpfprobes.kernel import headers
from bpfprobes.kernel.headers import Headers

NOBODY = 65534
ROOT = os.geteuid() == 0


@pytest.fixture
def base():
    d = Path(tempfile.mkdtemp(prefix="bpfprobes-cache-test-"))     # 0700, ours
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def umask000():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def fake_usr_src(root: Path) -> Path:
    """Debian's split headers, small: -common and -amd64 (a relative symlink too)."""
    src = root / "src"
    for rel, text in {"linux-headers-6.1.0-9-common/include/linux/sched.h": "common",
                      "linux-headers-6.1.0-9-common/Makefile": "common",
                      "linux-headers-6.1.0-9-amd64/include/generated/autoconf.h": "amd64",
                      "linux-headers-6.1.0-9-amd64/Makefile": "amd64"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    (src / "kbuild").mkdir()
    (src / "linux-headers-6.1.0-9-amd64" / "scripts").symlink_to("../kbuild")
    return src


def find(root: Path, cache: Path) -> Headers:
    return headers.find("6.18.44-custom", lib_modules=root / "none", usr_src=root / "src",
                        cache=cache)


def everything(top: Path) -> list[Path]:
    return [Path(r) / n for r, ds, fs in os.walk(top) for n in ds + fs]


# ---- modes whatever the umask ------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o000, 0o277])
def test_any_umask_still_gives_0700_dirs_and_0600_files(base, mask):
    fake_usr_src(base)
    cache = base / "cache"
    old = os.umask(mask)
    try:
        h = find(base, cache)
        with safefs.opened_dir(cache / "programs", private_from=cache) as fd:
            safefs.write_file(fd, "entry.json", b"{}")
    finally:
        os.umask(old)
    assert h.status == "nearest" and Path(h.path) == cache / "headers" / "6.1.0-9-amd64"
    for p in [cache, *everything(cache)]:
        st = os.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            assert mode(p) == 0o700, p
        elif stat.S_ISREG(st.st_mode):
            assert mode(p) == 0o600, p                      # the lock, the stamp, the entry
        else:
            assert stat.S_ISLNK(st.st_mode) and Path(h.path) in p.parents, p
        assert st.st_uid == os.geteuid()
    assert (Path(h.path) / "include/linux/sched.h").read_text() == "common"


def test_ancestors_we_create_are_0755_and_the_cache_0700(base, umask000):
    cache = base / "a" / "b" / "cache"
    os.close(safefs.open_dir(cache / "programs", private_from=cache))
    assert (mode(base / "a"), mode(base / "a" / "b")) == (0o755, 0o755)
    assert (mode(cache), mode(cache / "programs")) == (0o700, 0o700)


# ---- symlinks ---------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["cache", "cache/headers", "cache/programs"])
def test_a_symlink_at_a_cache_component_is_refused_and_nothing_written_through(base, where):
    fake_usr_src(base)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache = base / "cache"
    planted = base / where
    planted.parent.mkdir(mode=0o700, exist_ok=True)
    planted.symlink_to(elsewhere)
    with pytest.raises(safefs.UnsafePath, match="is a symlink"):
        if where == "cache/programs":
            safefs.open_dir(cache / "programs", private_from=cache)
        else:
            find(base, cache)
    assert list(elsewhere.iterdir()) == []


def test_an_ancestor_symlink_is_followed_only_when_root_owns_it(base):
    real = base / "real"
    real.mkdir(mode=0o755)
    link = base / "link"
    link.symlink_to("real")                 # ours (root's): only root could change it
    os.close(safefs.open_dir(link / "cache", private_from=link / "cache"))
    assert mode(real / "cache") == 0o700
    if not ROOT:
        return                              # another user's symlink needs lchown
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(safefs.UnsafePath, match=f"symlink owned by uid {NOBODY}"):
        safefs.open_dir(link / "other", private_from=link / "other")
    assert not (real / "other").exists()


def test_a_symlink_planted_at_a_file_is_replaced_never_written_through(base):
    cache = base / "cache"
    victim = base / "victim"
    victim.write_text("precious")
    with safefs.opened_dir(cache / "programs", private_from=cache) as fd:
        (cache / "programs" / "entry.json").symlink_to(victim)
        assert safefs.read_file(fd, "entry.json") is None        # not read through either
        assert progcache._read(cache / "programs" / "entry.json") is None
        safefs.write_file(fd, "entry.json", b'{"format": 2}')
    assert victim.read_text() == "precious"
    assert not (cache / "programs" / "entry.json").is_symlink()
    assert mode(cache / "programs" / "entry.json") == 0o600
    (cache / ".lock").symlink_to(victim)
    with safefs.opened_dir(cache, private_from=cache) as fd, \
            pytest.raises(safefs.UnsafePath, match="symlink"):
        with safefs.locked(fd):
            pass
    assert victim.read_text() == "precious"


# ---- directories someone else could change --------------------------------------------

def test_a_cache_dir_of_another_owner_is_refused(base):
    fake_usr_src(base)
    cache = base / "cache"
    cache.mkdir(mode=0o700)
    if ROOT:
        os.chown(cache, NOBODY, NOBODY)
        owner = NOBODY
    else:
        cache, owner = Path("/var"), 0          # unprivileged: a directory root owns
    with pytest.raises(safefs.UnsafePath, match=f"owned by uid {owner}"):
        find(base, cache)
    assert list(cache.iterdir()) == [] or not ROOT


@pytest.mark.parametrize("bad", ["cache", "cache/headers", "cache/programs"])
def test_a_cache_dir_writable_by_others_is_refused_not_fixed(base, bad):
    fake_usr_src(base)
    cache = base / "cache"
    (base / bad).mkdir(parents=True)
    os.chmod(base / bad, 0o777)
    with pytest.raises(safefs.UnsafePath, match=r"writable by others \(mode 0777\)"):
        if bad == "cache/programs":
            safefs.open_dir(cache / "programs", private_from=cache)
        else:
            find(base, cache)
    assert mode(base / bad) == 0o777        # refused: a new mode would not undo a plant
    assert not (cache / "headers" / "6.1.0-9-amd64").exists()


def test_our_cache_dir_others_can_only_read_is_tightened(base):
    cache = base / "cache"
    cache.mkdir()
    os.chmod(cache, 0o755)
    os.close(safefs.open_dir(cache / "programs", private_from=cache))
    assert mode(cache) == 0o700


def test_ancestors_writable_by_others_are_refused_unless_sticky(base):
    shared = base / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(safefs.UnsafePath, match="writable by others") as refused:
        safefs.open_dir(shared / "cache", private_from=shared / "cache")
    assert refused.value.hint == safefs.ABOVE_HINT      # not "remove it": it is not ours
    os.chmod(shared, 0o1777)                # as /tmp: others cannot move what we make
    os.close(safefs.open_dir(shared / "cache", private_from=shared / "cache"))
    assert mode(shared / "cache") == 0o700


# ---- the cache key: BCC, LLVM, the headers' content -----------------------------------

PROG = Program("x.bpf.c", "int f(void *ctx) { return 0; }", ("-w", "-DSKIP_PID=1"))
TOOLS = {"bcc": "0.26.0", "libbcc": "libbcc.so.0.26.0", "llvm": "14",
         "files": {"/usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0": [1, 2, 3, 4, 5]},
         "links": {}, "watch": {}, "env": ""}


def test_the_cache_key_changes_with_the_bcc_and_llvm_versions():
    h = Headers("nearest", "/usr/src/h", "test", "6.1.0")
    key = progcache.cache_key(PROG, h, TOOLS)
    assert key == progcache.cache_key(PROG, h, json.loads(json.dumps(TOOLS)))
    for change in ({"bcc": "0.27.0"}, {"libbcc": "libbcc.so.0.27.0"}, {"llvm": "15"},
                   {"files": {"/usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0": [1, 2, 3, 4, 6]}}):
        assert progcache.cache_key(PROG, h, {**TOOLS, **change}) != key, change
    # what only says whether the stamp still holds is not part of the key
    assert progcache.cache_key(PROG, h, {**TOOLS, "watch": {"/etc/ld.so.cache": [9]}}) == key


def make_libs(base: Path) -> tuple[str, Path]:
    lib = base / "lib"
    lib.mkdir()
    for name in ("libbcc.so.0.26.0", "libLLVM-14.so.1", "libclang-cpp.so.14", "libc.so.6"):
        (lib / name).write_bytes(name.encode())
    (lib / "libbcc.so.0").symlink_to("libbcc.so.0.26.0")
    (base / "bcc.py").write_text("__version__ = '0.26.0'")
    maps = "".join(f"7f00-7f01 r-xp 00000000 fe:00 {i} {lib / name}\n" for i, name in
                   enumerate(("libbcc.so.0.26.0", "libLLVM-14.so.1", "libclang-cpp.so.14",
                              "libc.so.6", "libbcc.so.0.26.0")))
    return maps + "7f02-7f03 rw-p 00000000 00:00 0 [heap]\n", lib


def test_the_toolchain_comes_from_the_compilers_mappings_and_holds_until_a_file_changes(base):
    maps, lib = make_libs(base)
    tools = progcache.toolchain_from(maps, "0.26.0", str(base / "bcc.py"))
    assert (tools["bcc"], tools["libbcc"], tools["llvm"]) == ("0.26.0", "libbcc.so.0.26.0", "14")
    assert sorted(tools["files"]) == sorted([str(base / "bcc.py")] + [
        str(lib / n) for n in ("libLLVM-14.so.1", "libbcc.so.0.26.0", "libclang-cpp.so.14")])
    assert tools["links"] == {str(lib / "libbcc.so.0"): "libbcc.so.0.26.0"}
    assert progcache.toolchain_holds(tools)
    (lib / "libLLVM-14.so.1").write_bytes(b"rebuilt LLVM 14")             # an upgrade in place
    assert not progcache.toolchain_holds(tools)
    tools = progcache.toolchain_from(maps, "0.26.0", str(base / "bcc.py"))
    (lib / "libbcc.so.0").unlink()
    (lib / "libbcc.so.0").symlink_to("libbcc.so.0.27.0")                  # another libbcc
    assert not progcache.toolchain_holds(tools)
    static = progcache.toolchain_from(maps.replace("libLLVM-14.so.1", "libc.so.6"), "0.26.0", None)
    assert static["llvm"] == "in libbcc"


def test_the_toolchain_stamp_does_not_hold_under_another_library_path(base, monkeypatch):
    maps, _lib = make_libs(base)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    tools = progcache.toolchain_from(maps, "0.26.0", None)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(base))
    assert not progcache.toolchain_holds(tools)


def test_dependency_lists_are_parsed_as_make_writes_them():
    text = (b"main.o: /virtual/main.c include/linux/kconfig.h \\\n"
            b"  include/generated/autoconf.h /virtual/include/bcc/bpf.h \\\n"
            b"  /abs/with\\ space.h include/linux/kconfig.h\n")
    assert progcache.parse_dependencies(text) == [
        "include/linux/kconfig.h", "include/generated/autoconf.h", "/abs/with space.h"]
    assert progcache.parse_dependencies(b"") == []


def header_tree(base: Path) -> Path:
    h = base / "h"
    (h / "include/linux").mkdir(parents=True)
    (h / "include/linux/x.h").write_text("#define X 1\n")
    (h / "include/linux/y.h").write_text("#define Y 2\n")
    return h


DEPS = b"main.o: /virtual/main.c include/linux/x.h include/linux/y.h\n"


def saved_entry(base: Path, h: Path, monkeypatch) -> tuple[int, str, Headers]:
    """An entry saved as after a compile that read x.h and y.h."""
    monkeypatch.setattr(progcache, "RACY_NS", 0)
    time.sleep(0.05)        # some clock ticks after the headers were written (see test below)
    hdrs = Headers("matching", str(h), "test", "6.1.0")
    fd = safefs.open_dir(base / "cache" / "programs", private_from=base / "cache")
    obj = {"format": progcache.FORMAT, "functions": {}, "maps": {}, "toolchain": TOOLS}
    progcache._save(fd, PROG, hdrs, obj, DEPS, time.time_ns())
    name = f"{progcache.cache_key(PROG, hdrs, TOOLS)}.json"
    assert progcache._read_entry(fd, name, hdrs) is not None
    return fd, name, hdrs


def test_a_cached_program_is_not_used_once_a_header_it_read_changes(base, monkeypatch):
    h = header_tree(base)
    fd, name, hdrs = saved_entry(base, h, monkeypatch)
    try:
        x = h / "include/linux/x.h"
        before = os.stat(x)
        x.write_text("#define X 2\n")                   # same path, same size
        os.utime(x, ns=(before.st_atime_ns, before.st_mtime_ns))    # and the old mtime
        assert progcache._read_entry(fd, name, hdrs) is None
    finally:
        os.close(fd)


def test_a_header_replaced_by_another_file_is_seen_too(base, monkeypatch):
    h = header_tree(base)
    fd, name, hdrs = saved_entry(base, h, monkeypatch)
    try:
        y = h / "include/linux/y.h"
        (h / "new.h").write_text(y.read_text())         # same content, a new file (dpkg)
        os.rename(h / "new.h", y)
        assert progcache._read_entry(fd, name, hdrs) is None
    finally:
        os.close(fd)


def test_headers_changed_just_before_or_during_a_compile_are_not_vouched_for(base):
    h = header_tree(base)                   # written now: within RACY_NS of the "compile"
    names = progcache.parse_dependencies(DEPS)
    assert progcache.header_fingerprints(str(h), names, time.time_ns()) is None
    assert progcache.header_fingerprints(str(h), [], time.time_ns()) is None      # no list
    assert progcache.header_fingerprints(str(h), names, time.time_ns() + 10**10) is not None


def test_an_entry_without_a_header_list_is_not_used(base):
    h = header_tree(base)
    hdrs = Headers("matching", str(h), "test", "6.1.0")
    with safefs.opened_dir(base / "c", private_from=base / "c") as fd:
        safefs.write_file(fd, "e.json", json.dumps({"format": progcache.FORMAT}).encode())
        assert progcache._read_entry(fd, "e.json", hdrs) is None


# ---- trees built once, by whoever comes first ------------------------------------------

def _find_in_child(root: str, cache: str, out) -> None:
    try:
        out.put(find(Path(root), Path(cache)).path)
    except BaseException as e:      # noqa: BLE001 - reported to the parent
        out.put(repr(e))


def test_concurrent_first_builds_all_get_one_whole_tree_and_leave_no_temporaries(base):
    fake_usr_src(base)
    cache = base / "cache"
    stale = cache / "headers" / f"6.1.0-9-amd64{safefs.TEMP_MARK}99999-dead"
    (stale / "include").mkdir(parents=True)             # a killed run's half-built tree
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_find_in_child, args=(str(base), str(cache), out))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert results == [str(cache / "headers" / "6.1.0-9-amd64")] * 4, results
    assert [p.name for p in (cache / "headers").iterdir()] == ["6.1.0-9-amd64"]
    tree = Path(results[0])
    assert (tree / "Makefile").read_text() == "amd64"
    assert (tree / headers.STAMP).exists()


def test_a_failed_build_leaves_nothing_behind(base):
    cache = base / "cache"

    def broken(tmp: Path) -> None:
        (tmp / "half").mkdir()
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        headers.shared_tree(cache, "headers", "x", {"format": 1}, broken)
    assert list((cache / "headers").iterdir()) == []


def test_a_tree_without_its_stamp_is_built_again(base):
    fake_usr_src(base)
    cache = base / "cache"
    old = cache / "headers" / "6.1.0-9-amd64"       # as an older bpfprobes left it
    (old / "include").mkdir(parents=True)
    (old / "include" / "planted.h").write_text("")
    h = find(base, cache)
    assert Path(h.path) == old and not (old / "include" / "planted.h").exists()
    assert (old / "Makefile").read_text() == "amd64"


def test_kheaders_are_unpacked_privately_and_only_files_and_directories(base, monkeypatch):
    archive = base / "kheaders.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        def add(name: str, kind: bytes, data: bytes = b"", linkname: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size, info.linkname = kind, 0o777, len(data), linkname
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("include", tarfile.DIRTYPE)
        add("include/a.h", tarfile.REGTYPE, b"#define A 1\n")
        add("include/evil", tarfile.SYMTYPE, linkname="/etc/passwd")
        add("../escape.h", tarfile.REGTYPE, b"x")
    monkeypatch.setattr(headers, "KHEADERS", archive)
    cache = base / "cache"
    h = headers.find("6.18.44-custom", lib_modules=base / "none", usr_src=base / "src",
                     cache=cache)
    tree = cache / "kheaders" / "6.18.44-custom"
    assert (h.status, h.source, Path(h.path)) == ("matching", "kheaders", tree)
    assert (tree / "include/a.h").read_text() == "#define A 1\n"
    assert (mode(tree), mode(tree / "include"), mode(tree / "include/a.h")) == (0o700, 0o700, 0o644)
    assert not os.path.lexists(tree / "include/evil")
    assert not (cache / "kheaders" / "escape.h").exists() and not (base / "escape.h").exists()
    assert h == headers.find("6.18.44-custom", lib_modules=base / "none",
                             usr_src=base / "src", cache=cache)       # the second time: as is


def test_the_least_recently_used_entries_go_past_the_cap(tmp_path):
    """Every distinct probe is a program of its own: the cache keeps the most
    recently used MAX_ENTRIES, a hit counts as a use, and nothing else is touched."""
    for i in range(5):
        (tmp_path / f"k{i}.json").write_text("{}")
        os.utime(tmp_path / f"k{i}.json", (1000 + i, 1000 + i))
    (tmp_path / progcache.TOOLCHAIN).write_text("{}")
    (tmp_path / f"k9.json{safefs.TEMP_MARK}1-ab").write_text("{}")     # a writer's temporary
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        progcache._touch(fd, "k0.json")            # the oldest, just used
        progcache._prune(fd, 3)
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["k0.json", "k3.json", "k4.json", progcache.TOOLCHAIN, f"k9.json{safefs.TEMP_MARK}1-ab"])
