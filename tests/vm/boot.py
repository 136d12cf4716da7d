"""Boot a test VM (a distro kernel with kprobes, one of kernels.KERNELS) and run
one command in it, as root, from the checkout, which the guest sees at the same path.

virtme-ng boots an x86_64 kernel on a read-only view of this machine's own root
filesystem (the .venv works there as here); a foreign kernel (arm64) on the root
filesystem `kernels.py prepare` built for it, with the guest's own Python. In both,
`bpfprobes`, `opensnoop` and `execsnoop` on PATH run this checkout's code. No KVM
here (QEMU's KVM fails on this host): emulation.
Usage: python tests/vm/boot.py [--kernel NAME] [--rwdir DIR]... -- CMD
"""
from __future__ import annotations

import argparse
import configparser
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels  # noqa: E402

RC_MARK = "__BPFPROBES_VM_RC="
UP_MARK = "__BPFPROBES_VM_UP__"


CHECKOUT = Path(__file__).resolve().parents[2]


def console_scripts() -> dict[str, tuple[str, str]]:
    """setup.cfg's commands (what the venv has): name -> (module, function)."""
    cfg = configparser.ConfigParser()
    cfg.read(CHECKOUT / "setup.cfg")
    found = {}
    for line in cfg["options.entry_points"]["console_scripts"].splitlines():
        name, _, target = line.partition("=")
        if target:
            module, _, func = target.strip().partition(":")
            found[name.strip()] = (module, func)
    return found


def guest_python(k: kernels.Kernel) -> str:
    """The interpreter tests and tools run with in `k`'s guest."""
    return "python3" if k.foreign else sys.executable


def guest_bin(k: kernels.Kernel) -> Path:
    """A directory of the tools as commands, for the guest's PATH: the venv's own
    entry points, or (foreign) the same entry points as small scripts running the
    checkout with the guest's Python."""
    if not k.foreign:
        return Path(sys.executable).parent
    d = kernels.BUILD / k.name / "bin"
    d.mkdir(parents=True, exist_ok=True)
    for tool, (module, func) in console_scripts().items():
        call = shlex.quote(f"import sys; from {module} import {func}; sys.exit({func}())")
        script = (f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(CHECKOUT))}${{PYTHONPATH:+:$PYTHONPATH}} "
                  f"exec python3 -c {call} \"$@\"\n")
        if not (d / tool).is_file() or (d / tool).read_text() != script:
            (d / tool).write_text(script)
            (d / tool).chmod(0o755)
    return d


def vng() -> str:
    here = Path(sys.executable).parent / "vng"
    found = str(here) if here.exists() else shutil.which("vng")
    if not found:
        raise SystemExit("vng (virtme-ng) not found: make setup installs it into .venv")
    return found


BOOT_SILENCE_S = 240     # no first line (UP_MARK) by then: the boot hung (seen with two VMs)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run_once(argv: list[str], env: dict, timeout: float, echo: bool) -> tuple[int | None, str]:
    """One boot; (None, output) when the VM said nothing within BOOT_SILENCE_S."""
    # a session of its own, so that a hung boot is killed with its QEMU child
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, errors="replace",
                            start_new_session=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if echo and not line.startswith((RC_MARK, UP_MARK)):
                sys.stdout.write(line)
                sys.stdout.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(BOOT_SILENCE_S)
    if not lines and reader.is_alive():
        _kill(proc)
        return None, ""
    reader.join(max(0.0, timeout - BOOT_SILENCE_S))
    if reader.is_alive():
        _kill(proc)
        return 124, "".join(lines) + "\nVM timed out\n"
    proc.wait()
    return proc.returncode, "".join(lines)


def _scratch_disk_opts(img: Path) -> str:
    """A sparse 64 MiB virtio-blk disk (vda in the VM): the irq tests need a real
    virtio block device whose interrupts they can cause. A new file for every
    boot: QEMU locks its images, and a hung boot's QEMU may not be gone yet."""
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    return (f"-drive file={img},if=none,id=scratch,format=raw,cache=none "
            f"-device virtio-blk-pci,drive=scratch")


def _vng_argv(k: kernels.Kernel, rwdirs: list[str]) -> list[str]:
    argv = [vng(), "--run", str(kernels.image(k)), "--disable-kvm", "--force-9p",
            "--cpus", "2", "--memory", "3G"]
    if not k.foreign:
        return argv + [a for d in rwdirs for a in ("--rwdir", d)]
    # a root of its own: the checkout and every shared directory at the same path,
    # on mount points made in that root (the guest's root is read-only)
    argv += ["--arch", k.qemu_arch, "--root", str(k.guest_root)]
    for kind, d in [("--rodir", str(CHECKOUT)), *(("--rwdir", d) for d in rwdirs)]:
        (k.guest_root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        argv += [kind, f"{d}={d}"]
    return argv


def run_in_vm(cmd: str, rwdirs: list[str] = (), timeout: float = 3000,
              echo: bool = True, kernel: str = kernels.DEFAULT) -> tuple[int, str]:
    """Run `cmd` as root in `kernel`'s VM from the current directory; (its status, its output)."""
    k = kernels.get(kernel)
    kernels.prepare(k)
    # a line at once: the watchdog waits for a first line, and a command such as
    # pytest -q may print none for minutes (its progress dots end no line)
    prelude = [f"echo {UP_MARK}", "mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null",
               "mount -t debugfs nodev /sys/kernel/debug 2>/dev/null",
               f"export PATH={shlex.quote(str(guest_bin(k)))}:$PATH"]
    if k.foreign:
        # its root was extracted, not configured: the loader's cache is made here
        # (into the guest's /etc overlay), as libc-bin's trigger would have
        prelude.append("ldconfig")
    script = "; ".join(prelude) + f"; cd {shlex.quote(os.getcwd())} && {{ {cmd} ; }}; echo {RC_MARK}$?"
    argv = _vng_argv(k, list(rwdirs)) + ["--exec", script]
    env = dict(os.environ, PATH=f"{Path(vng()).parent}:{os.environ.get('PATH', '')}")
    try:
        for attempt in (1, 2, 3):
            with tempfile.TemporaryDirectory(prefix="bpfprobes-vda-") as d:
                disk = "--qemu-opts=" + _scratch_disk_opts(Path(d) / "vda.img")
                rc, out = _run_once(argv[:-2] + [disk] + argv[-2:], env, timeout, echo)
            if rc is not None:
                break
            print(f"[vm] no output from the VM after {BOOT_SILENCE_S} s: boot hung, "
                  f"{'retrying' if attempt < 3 else 'giving up'}", file=sys.stderr, flush=True)
        else:
            return 125, f"the VM did not boot in three tries (no output in {BOOT_SILENCE_S} s)\n"
    finally:
        if k.foreign:
            for d in rwdirs:                    # the mount points made for this boot
                try:
                    (k.guest_root / d.lstrip("/")).rmdir()
                except OSError:
                    pass
    m = re.search(RC_MARK + r"(\d+)", out)
    if m is None:
        return rc or 125, out + "\nVM ended without reporting the command's status\n"
    return int(m.group(1)), out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", default=kernels.DEFAULT, choices=list(kernels.KERNELS))
    p.add_argument("--rwdir", action="append", default=[])
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = " ".join(a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd)
    if not cmd:
        p.error("no command")
    rc, _ = run_in_vm(cmd, a.rwdir, kernel=a.kernel)
    return rc


if __name__ == "__main__":
    sys.exit(main())
