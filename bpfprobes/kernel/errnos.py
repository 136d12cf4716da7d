"""errno names for negative return values: `ret=-2 (ENOENT)`.

Python's table has the user-visible codes; the kernel also returns its own
(ERESTARTSYS, ENOTSUPP, ...) from internal functions, which a kprobe sees.
"""
from __future__ import annotations

import errno

MAX_ERRNO = 4095        # the kernel's IS_ERR_VALUE range: -4095..-1

# include/linux/errno.h: codes that never reach user space, but do reach a kretprobe
KERNEL_ONLY = {
    512: "ERESTARTSYS", 513: "ERESTARTNOINTR", 514: "ERESTARTNOHAND", 515: "ENOIOCTLCMD",
    516: "ERESTART_RESTARTBLOCK", 517: "EPROBE_DEFER", 518: "EOPENSTALE", 519: "ENOPARAM",
    521: "EBADHANDLE", 522: "ENOTSYNC", 523: "EBADCOOKIE", 524: "ENOTSUPP", 525: "ETOOSMALL",
    526: "ESERVERFAULT", 527: "EBADTYPE", 528: "EJUKEBOX", 529: "EIOCBQUEUED",
    530: "ERECALLCONFLICT", 531: "ENOGRACE",
}

_BY_NAME = {**{v: k for k, v in KERNEL_ONLY.items()}, **{v: k for k, v in errno.errorcode.items()}}


def name(value: int) -> str | None:
    """`ENOENT` for -2; None outside the errno range or for unknown codes."""
    if not -MAX_ERRNO <= value <= -1:
        return None
    return errno.errorcode.get(-value) or KERNEL_ONLY.get(-value)


def code(text: str) -> int | None:
    """2 for `ENOENT` (positive), None if the name is unknown."""
    return _BY_NAME.get(text)
