"""Header discovery on fake trees: matching, nearest (merged -common + -arch), none."""
from pathlib import Path

from bpfprobes.kernel import headers


def make(p: Path, files: dict) -> None:
    for rel, text in files.items():
        f = p / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


def test_matching_build_dir_wins(tmp_path):
    make(tmp_path / "lib/modules/6.1.0-9-amd64/build", {"include/linux/x.h": "", "Makefile": ""})
    h = headers.find("6.1.0-9-amd64", lib_modules=tmp_path / "lib/modules",
                     usr_src=tmp_path / "src", cache=tmp_path / "cache")
    assert h.status == "matching"
    assert h.bcc_env() == {"BCC_KERNEL_SOURCE": None, "BCC_KERNEL_MODULES_SUFFIX": None}
    assert h.relative_base == h.path


def test_debians_split_headers_are_compiled_from_the_source_dir_as_bcc_does(tmp_path):
    # /lib/modules/R/build -> -amd64 (generated headers), source -> -common: BCC
    # compiles in source, so clang's dependency list names headers relative to it
    src = tmp_path / "src"
    make(src / "linux-headers-6.1.0-9-common", {"include/linux/sched.h": "", "Makefile": ""})
    make(src / "linux-headers-6.1.0-9-amd64", {"include/generated/autoconf.h": "", "Makefile": ""})
    mods = tmp_path / "lib/modules/6.1.0-9-amd64"
    mods.mkdir(parents=True)
    (mods / "build").symlink_to(src / "linux-headers-6.1.0-9-amd64")
    (mods / "source").symlink_to(src / "linux-headers-6.1.0-9-common")
    h = headers.find("6.1.0-9-amd64", lib_modules=tmp_path / "lib/modules",
                     usr_src=src, cache=tmp_path / "cache")
    assert h.path == str(src / "linux-headers-6.1.0-9-amd64")
    assert h.relative_base == str(src / "linux-headers-6.1.0-9-common")


def test_nearest_distro_headers_are_merged_without_touching_lib_modules(tmp_path):
    src = tmp_path / "src"
    make(src / "linux-headers-6.1.0-9-common", {"include/linux/sched.h": "common",
                                                "Makefile": "common"})
    make(src / "linux-headers-6.1.0-9-amd64", {"include/generated/autoconf.h": "amd64",
                                               "Makefile": "amd64"})
    make(src / "linux-headers-5.10.0-1-amd64", {"Makefile": "old"})
    (src / "kbuild").mkdir()
    (src / "linux-headers-6.1.0-9-amd64" / "scripts").symlink_to("../kbuild")
    h = headers.find("6.18.44-custom", lib_modules=tmp_path / "none",
                     usr_src=src, cache=tmp_path / "cache")
    assert h.status == "nearest" and h.release == "6.1.0-9-amd64"
    merged = Path(h.path)
    assert (merged / "include/linux/sched.h").read_text() == "common"
    assert (merged / "include/generated/autoconf.h").read_text() == "amd64"
    assert (merged / "Makefile").read_text() == "amd64"          # the arch tree wins
    assert (merged / "scripts").resolve() == (src / "kbuild").resolve()   # no dangling links
    assert h.bcc_env() == {"BCC_KERNEL_SOURCE": str(merged), "BCC_KERNEL_MODULES_SUFFIX": None}
    assert not (tmp_path / "none").exists()


def test_none(tmp_path):
    h = headers.find("6.18", lib_modules=tmp_path / "a", usr_src=tmp_path / "b",
                     cache=tmp_path / "c")
    assert h.status == "none" and h.path is None
