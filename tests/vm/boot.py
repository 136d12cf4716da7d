"""Boot the test VM (a distro kernel with kprobes) and run one command in it.

virtme-ng boots the newest installed /boot/vmlinuz-* on a read-only view of
this machine's own root filesystem, so the checkout and its .venv are visible
at the same paths. No KVM here (QEMU's KVM fails on this host): emulation.
Usage: python tests/vm/boot.py [--rwdir DIR]... -- CMD
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

RC_MARK = "__BPFPROBES_VM_RC="
UP_MARK = "__BPFPROBES_VM_UP__"


def kernel_image() -> Path:
    """Newest /boot/vmlinuz-X that has /lib/modules/X (so modules and headers match)."""
    images = [p for p in Path("/boot").glob("vmlinuz-*")
              if (Path("/lib/modules") / p.name.removeprefix("vmlinuz-")).is_dir()]
    if not images:
        raise SystemExit("no /boot/vmlinuz-* with /lib/modules: install linux-image-amd64 "
                         "(make setup)")
    return max(images, key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)])


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


def run_in_vm(cmd: str, rwdirs: list[str] = (), timeout: float = 3000,
              echo: bool = True) -> tuple[int, str]:
    """Run `cmd` as root in the VM from the current directory; (its status, its output)."""
    # a line at once: the watchdog waits for a first line, and a command such as
    # pytest -q may print none for minutes (its progress dots end no line)
    script = f"echo {UP_MARK}; cd {os.getcwd()} && {{ {cmd} ; }}; echo {RC_MARK}$?"
    argv = [vng(), "--run", str(kernel_image()), "--disable-kvm", "--force-9p",
            "--cpus", "2", "--memory", "3G"]
    for d in rwdirs:
        argv += ["--rwdir", d]
    argv += ["--exec", script]
    env = dict(os.environ, PATH=f"{Path(vng()).parent}:{os.environ.get('PATH', '')}")
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
    m = re.search(RC_MARK + r"(\d+)", out)
    if m is None:
        return rc or 125, out + "\nVM ended without reporting the command's status\n"
    return int(m.group(1)), out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rwdir", action="append", default=[])
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = " ".join(a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd)
    if not cmd:
        p.error("no command")
    rc, _ = run_in_vm(cmd, a.rwdir)
    return rc


if __name__ == "__main__":
    sys.exit(main())
