"""The VM tier's kernel matrix: every kernel the tests boot, named once.

A kernel is a Debian image package with its headers, an architecture and the
QEMU machine that runs it. x86_64 kernels boot on a view of this machine's own
root filesystem (their packages are installed here, so /lib/modules and the
headers match); a foreign architecture boots on a root filesystem of its own,
built by `prepare` from the Debian registry into the checkout's build tree and
never installed on this machine (no foreign dpkg architecture, no binfmt).
Usage: python tests/vm/kernels.py packages | prepare [NAME...] | names
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "vm"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITE = "bookworm"


@dataclass(frozen=True)
class Kernel:
    name: str              # what KERNEL= and test ids say
    arch: str              # `uname -m` in the guest
    image: str             # Debian package (a meta package: the newest ABI)
    headers: str
    release: str           # regex of `uname -r` this image installs
    qemu_arch: str         # virtme-ng's --arch
    machine: str           # the QEMU machine and CPU, for the README's table
    smoke: bool            # in `make test`: True = the smoke set only

    @property
    def foreign(self) -> bool:
        return self.arch != platform.machine()

    def release_matches(self, release: str) -> bool:
        return re.fullmatch(self.release, release) is not None

    @property
    def guest_root(self) -> Path:
        """Where a foreign kernel's root filesystem is built ("/" for a native one)."""
        return BUILD / self.name / "root" if self.foreign else Path("/")


# The one table. `make test` boots each: the whole VM tier on a kernel with
# smoke=False, the tests marked `smoke` on the others; `make test-kernels`: all on all.
KERNELS = {k.name: k for k in (
    Kernel("6.1", "x86_64", "linux-image-amd64", "linux-headers-amd64",
           r"6\.1\.0-\d+-amd64", "x86_64", "q35, -cpu max, TCG, 2 vCPUs", smoke=False),
    Kernel("6.12", "x86_64", "linux-image-6.12-amd64", "linux-headers-6.12-amd64",
           r"6\.12\.\d+\+deb12-amd64", "x86_64", "q35, -cpu max, TCG, 2 vCPUs", smoke=True),
    Kernel("arm64", "aarch64", "linux-image-arm64", "linux-headers-arm64",
           r"6\.1\.0-\d+-arm64", "arm64", "virt, -cpu cortex-a57, TCG, 2 vCPUs", smoke=True),
)}
DEFAULT = "6.1"

# What a foreign guest needs besides its kernel: BCC for its Python, the project's
# Python dependencies from Debian (the host's venv cannot run there), a compiler
# for the tests' small programs, busybox for virtme-ng's initramfs.
GUEST_PACKAGES = ("bash", "busybox-static", "coreutils", "util-linux", "mount", "kmod", "procps",
                  "grep", "sed", "findutils", "iproute2", "base-passwd", "debianutils", "libc-bin",
                  "bpftool", "e2fsprogs",          # mkfs.ext4: count's ext4 test
                  "python3", "python3-bpfcc", "libbpfcc", "python3-pyroute2",
                  "python3-tabulate", "python3-prometheus-client", "python3-pytest",
                  "gcc", "libc6-dev", "systemtap-sdt-dev")


def get(name: str) -> Kernel:
    try:
        return KERNELS[name]
    except KeyError:
        raise SystemExit(f"unknown kernel {name!r}: one of {', '.join(KERNELS)}") from None


def host_packages() -> list[str]:
    """Debian packages this machine needs to boot every native kernel of the table."""
    return [p for k in KERNELS.values() if not k.foreign for p in (k.image, k.headers)]


def image(k: Kernel) -> Path:
    """The newest installed image of `k` that has its modules (so headers match)."""
    boot = k.guest_root / "boot"
    found = [p for p in boot.glob("vmlinuz-*")
             if k.release_matches(p.name.removeprefix("vmlinuz-"))
             and (k.guest_root / "lib/modules" / p.name.removeprefix("vmlinuz-")).is_dir()]
    if not found:
        how = (f"make setup-test builds {k.guest_root}" if k.foreign
               else f"make setup-test installs {k.image}")
        raise SystemExit(f"kernel {k.name}: no {boot}/vmlinuz-* matching {k.release}: {how}")
    return max(found, key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)])


def _root_key(k: Kernel) -> str:
    """What a built root depends on: rebuilt when the package list changes."""
    return hashlib.sha256(" ".join((SUITE, k.image, k.headers, *GUEST_PACKAGES))
                          .encode()).hexdigest()[:16]


def _finish_root(root: Path) -> None:
    """What the skipped maintainer scripts would have made and the guest needs
    (the guest's binaries cannot run here to make it themselves)."""
    (root / "bin/sh").symlink_to("bash")
    for name in ("passwd", "group"):
        shutil.copy(root / f"usr/share/base-passwd/{name}.master", root / "etc" / name)
    (root / "etc/hostname").write_text("bpfprobes-guest\n")
    (root / "etc/shadow").touch()                 # virtme-init mounts over it
    conf = root / "etc/ld.so.conf"                # the guest's ldconfig runs at boot (boot.py)
    if not conf.exists():
        conf.write_text("include /etc/ld.so.conf.d/*.conf\n")


def prepare(k: Kernel) -> None:
    """Make `k` bootable: check a native kernel's packages, build a foreign root once."""
    if not k.foreign:
        image(k)
        return
    root, stamp = k.guest_root, k.guest_root.parent / "root.key"
    if root.is_dir() and stamp.is_file() and stamp.read_text() == _root_key(k):
        return
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("mmdebstrap not found: make setup-test installs it")
    print(f"kernels: building the {k.name} root filesystem in {root} (Debian {SUITE}, "
          f"{k.arch}; extracted, not configured: about a minute)", flush=True)
    shutil.rmtree(root.parent, ignore_errors=True)
    root.parent.mkdir(parents=True)
    tmp = root.parent / "root.tmp"
    subprocess.run(["mmdebstrap", "--mode=root", "--variant=extract", f"--arch={k.qemu_arch}",
                    "--include=" + ",".join((k.image, k.headers, *GUEST_PACKAGES)),
                    SUITE, str(tmp),
                    f"deb {MIRROR} {SUITE} main", f"deb {MIRROR} {SUITE}-updates main",
                    f"deb {SECURITY} {SUITE}-security main"], check=True)
    _finish_root(tmp)
    tmp.rename(root)
    stamp.write_text(_root_key(k))
    image(k)


def main(argv: list[str]) -> int:
    what, names = (argv[0] if argv else "names"), argv[1:]
    if what == "packages":
        print(" ".join(host_packages()))
    elif what == "prepare":
        for k in (map(get, names) if names else KERNELS.values()):
            prepare(k)
    elif what == "names":
        print(" ".join(KERNELS))
    else:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
