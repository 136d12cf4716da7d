"""Interrupt lines: /proc/interrupts, and a device name resolved to its IRQs.

A network interface is asked about over netlink and the ethtool ioctl through
pyroute2 (its parent device, driver and bus address), a block device through
sysfs; either way the IRQ lines are the MSI/MSI-X vectors of the bus device
(/sys/bus/pci/devices/ADDR/msi_irqs) or its legacy line, plus any line whose
action is named after the device (many drivers name vectors "eth0-rx-0" or
"nvme0q1"). Every step is noted in `Device.evidence` for -v.
"""
from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bpfprobes.base.errors import UsageError
from bpfprobes.base.safetext import for_terminal
from bpfprobes.kernel.kallsyms import Wildcard

PROC_INTERRUPTS = Path("/proc/interrupts")
SYS = Path("/sys")
ETHTOOL_GDRVINFO = 0x00000003
NAME_MAX = 255                  # a path component: longer names are in no directory


@dataclass(frozen=True)
class Line:
    """One numbered row of /proc/interrupts."""
    irq: int
    counts: tuple[int, ...]      # per CPU
    chip: str
    hwirq: str
    name: str                    # the actions' names, comma-separated when shared

    @property
    def total(self) -> int:
        return sum(self.counts)


_TRIGGER_WORDS = ("Edge", "Level")


def read_lines(text: str | None = None) -> dict[int, Line]:
    """Numbered IRQ lines of /proc/interrupts (the NMI/LOC/... rows are not lines)."""
    text = PROC_INTERRUPTS.read_text() if text is None else text
    rows = text.splitlines()
    ncpu = len(rows[0].split()) if rows else 0
    out = {}
    for row in rows[1:]:
        head, _, rest = row.partition(":")
        if not head.strip().isdigit():
            continue
        parts = rest.split()
        counts = tuple(int(x) for x in parts[:ncpu] if x.isdigit())
        tail = parts[len(counts):]
        # chip, then hwirq-and-trigger (x86: "1-edge"; arm64 and other
        # GENERIC_IRQ_SHOW_LEVEL kernels: "71 Edge", perhaps a "-flow" after), then
        # the action names
        chip = tail[0] if tail else ""
        hwirq = tail[1] if len(tail) > 1 else ""
        names = tail[2:]
        while names and (names[0] in _TRIGGER_WORDS or names[0].startswith("-")):
            names = names[1:]
        out[int(head)] = Line(int(head), counts, chip, hwirq, " ".join(names))
    return out


@dataclass
class Device:
    """What a name on the command line turned out to be."""
    kind: str                            # net | block | irq | pattern | all
    name: str
    irqs: list[int] = field(default_factory=list)
    driver: str | None = None
    module: str | None = None            # loadable module holding the driver, if any
    bus_info: str | None = None          # e.g. PCI address 0000:00:03.0
    evidence: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "irqs": self.irqs, "driver": self.driver,
                "module": self.module, "bus_info": self.bus_info}


def _link_name(path: Path) -> str | None:
    try:
        return Path(os.readlink(path)).name
    except OSError:
        return None


def _loadable_module(driver_dir: Path) -> str | None:
    """The driver's module if it is loadable (built-in ones have no initstate)."""
    mod = _link_name(driver_dir / "module")
    if mod and (SYS / "module" / mod / "initstate").exists():
        return mod
    return None


def _bus_irqs(dev: Path) -> tuple[list[int], str | None]:
    """MSI/MSI-X vectors or the legacy line of the nearest bus device at or above
    `dev` that has interrupts (a virtio device's PCI function, an nvme
    controller's PCI function), and that device's address."""
    dev = dev.resolve()
    for d in (dev, *dev.parents):
        if d == SYS / "devices" or d == SYS:
            break
        msi = d / "msi_irqs"
        if msi.is_dir():
            irqs = sorted(int(p.name) for p in msi.iterdir() if p.name.isdigit())
            if irqs:
                return irqs, d.name
        legacy = d / "irq"
        if legacy.is_file():
            try:
                n = int(legacy.read_text())
            except ValueError:
                n = 0
            if n > 0:
                return [n], d.name
    return [], None


def _named_after(lines: dict[int, Line], names: list[str]) -> list[int]:
    """Lines whose action names start with one of `names` followed by a
    separator ("eth0-rx-0", "virtio2-input.0", "nvme0q1")."""
    rx = re.compile(r"(?:^|[\s,])(?:" + "|".join(re.escape(n) for n in names) + r")(?:[-_.:@q]|$)")
    return [n for n, line in lines.items() if rx.search(line.name)]


def _drvinfo(ifname: str) -> tuple[str, str] | str:
    """(driver, bus_info) from the ethtool GDRVINFO ioctl, through pyroute2's
    socket; or why not (a software device such as lo has no driver info)."""
    from pyroute2.ethtool.ioctl import EthtoolError, IoctlEthtool  # noqa: PLC0415

    class DrvInfo(ctypes.Structure):
        _fields_ = [("cmd", ctypes.c_uint32), ("driver", ctypes.c_char * 32),
                    ("version", ctypes.c_char * 32), ("fw_version", ctypes.c_char * 32),
                    ("bus_info", ctypes.c_char * 32), ("erom_version", ctypes.c_char * 32),
                    ("reserved2", ctypes.c_char * 12), ("n_priv_flags", ctypes.c_uint32),
                    ("n_stats", ctypes.c_uint32), ("testinfo_len", ctypes.c_uint32),
                    ("eedump_len", ctypes.c_uint32), ("regdump_len", ctypes.c_uint32)]

    eth = IoctlEthtool(ifname)
    try:
        info = DrvInfo(cmd=ETHTOOL_GDRVINFO)
        eth.ifreq.gstrings = ctypes.cast(ctypes.byref(info), ctypes.c_void_p)
        eth.ioctl()
        return info.driver.decode(), info.bus_info.decode()
    except (OSError, EthtoolError) as e:
        return f"{type(e).__name__} {e}".strip()
    finally:
        eth.close()


def _netlink_link(ifname: str) -> dict | None:
    """IFLA attributes of `ifname` over rtnetlink, or None if there is no such link."""
    from pyroute2 import IPRoute  # noqa: PLC0415
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415
    with IPRoute() as ip:
        try:
            msg = ip.link("get", ifname=ifname)[0]
        except NetlinkError:
            return None
        return {"index": msg["index"], **{k: v for k, v in msg["attrs"]
                                           if isinstance(k, str) and k.startswith("IFLA_")}}


def resolve_net(ifname: str, lines: dict[int, Line]) -> Device | None:
    link = _netlink_link(ifname)
    if link is None:
        return None
    dev = Device("net", ifname)
    parent, bus = link.get("IFLA_PARENT_DEV_NAME"), link.get("IFLA_PARENT_DEV_BUS_NAME")
    dev.evidence.append(f"netlink: {ifname} is link {link['index']}"
                        + (f", parent device {parent} on bus {bus}" if parent else ""))
    info = _drvinfo(ifname)
    if isinstance(info, tuple):
        dev.driver, dev.bus_info = (x or None for x in info)
        dev.evidence.append(f"ethtool: driver {dev.driver}, bus-info {dev.bus_info or '-'}")
    else:
        dev.evidence.append(f"ethtool: no driver information ({info})")
    sysdev = SYS / "class" / "net" / ifname / "device"
    if sysdev.exists():
        dev.module = _loadable_module(sysdev / "driver")
        irqs, where = _bus_irqs(sysdev)
        if irqs:
            dev.evidence.append(f"sysfs: {where} has IRQs {', '.join(map(str, irqs))}")
            dev.bus_info = dev.bus_info or where
        dev.irqs = irqs
    names = [ifname] + ([parent] if parent else [])
    extra = [n for n in _named_after(lines, names) if n not in dev.irqs]
    if extra:
        dev.evidence.append(f"/proc/interrupts: lines named after {'/'.join(names)}: "
                            f"{', '.join(map(str, extra))}")
        dev.irqs += extra
    dev.irqs = sorted(n for n in dev.irqs if n in lines)
    return dev


def resolve_block(name: str, lines: dict[int, Line]) -> Device | None:
    block = SYS / "block" / name
    if not block.exists():
        part = SYS / "class" / "block" / name          # a partition: its disk's device
        if not part.exists():
            return None
        block = part.resolve().parent
    sysdev = block / "device"
    if not sysdev.exists():
        return Device("block", name, evidence=[f"sysfs: {name} has no device (virtual)"])
    dev = Device("block", name)
    dev.driver = _link_name(sysdev / "driver")
    dev.module = _loadable_module(sysdev / "driver")
    devname = sysdev.resolve().name
    dev.evidence.append(f"sysfs: {name} is {devname}, driver {dev.driver or '-'}")
    irqs, where = _bus_irqs(sysdev)
    if irqs:
        dev.evidence.append(f"sysfs: {where} has IRQs {', '.join(map(str, irqs))}")
    dev.bus_info = where
    extra = [n for n in _named_after(lines, [devname]) if n not in irqs]
    if extra:
        dev.evidence.append(f"/proc/interrupts: lines named after {devname}: "
                            f"{', '.join(map(str, extra))}")
    dev.irqs = sorted(n for n in irqs + extra if n in lines)
    return dev


def _is_utf8(text: str) -> bool:
    """False when argv held bytes that are not UTF-8 (surrogate escapes)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _quoted(name: str) -> str:
    return f"'{for_terminal(name)}'"


def _not_a_device(name: str) -> str | None:
    """Why `name` cannot be a device we can look up, or None. Names are path
    components under /sys (a '/' in a disk's name shows there as '!'); an interface
    name that is not UTF-8 is legal, but netlink (pyroute2) cannot be asked about it."""
    if name in ("", ".", "..") or "/" in name or len(os.fsencode(name)) > NAME_MAX:
        return "is not a device name"
    if not _is_utf8(name) and (SYS / "class" / "net" / name).exists():
        return "is a network interface whose name is not UTF-8, which netlink cannot look up"
    return None


def resolve(name: str | None, irqs: list[int], pattern: str | None,
            lines: dict[int, Line] | None = None) -> Device:
    """The device (or lines) the user named; UsageError if nothing matches."""
    lines = read_lines() if lines is None else lines
    if irqs:
        missing = [n for n in irqs if n not in lines]
        if missing:
            raise UsageError(f"IRQ {missing[0]} is not in /proc/interrupts",
                             "see cat /proc/interrupts")
        return Device("irq", ",".join(map(str, irqs)), sorted(set(irqs)),
                      evidence=[f"--irq: {', '.join(map(str, irqs))}"])
    if pattern is not None:
        w = Wildcard(pattern)
        found = sorted(n for n, line in lines.items()
                       if w.match(line.name)
                       or any(w.match(a.strip()) for a in line.name.split(",")))
        if not found:
            raise UsageError(f"no IRQ line named like {_quoted(pattern)} in /proc/interrupts",
                             "patterns are shell wildcards: --name 'virtio*-input*'")
        return Device("pattern", pattern, found,
                      evidence=[f"/proc/interrupts: {_quoted(pattern)} matches "
                                f"{', '.join(map(str, found))}"])
    if name is None:
        return Device("all", "all", evidence=["no device given: every IRQ line"])
    problem = _not_a_device(name)
    if problem is not None:
        raise UsageError(f"{_quoted(name)} {problem}",
                         "name one from ip link or lsblk, or its lines with --irq N "
                         "(see /proc/interrupts)")
    # netlink names are UTF-8 (pyroute2): other bytes can only be a block device here
    dev = (resolve_net(name, lines) if _is_utf8(name) else None) or resolve_block(name, lines)
    if dev is None:
        raise UsageError(f"{_quoted(name)} is neither a network interface nor a block device",
                         "name one from ip link or lsblk, or use --irq N / --name PATTERN")
    if not dev.irqs:
        raise UsageError(f"{name} ({dev.driver or 'no driver'}) has no IRQ lines of its own",
                         "virtual devices (lo, loop, zram) take no interrupts")
    return dev
