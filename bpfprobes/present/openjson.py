"""opensnoop's JSON lines straight from its samples: one template per line,
each text encoded once and remembered (comms, paths, flag sets and errnos come
back again and again), no dict per event and no encoder walk over one. It is
what json.dumps writes of the event (tests/unit/test_openjson.py holds it to
that, byte for byte): strings by json's own ASCII encoder, numbers as Python
writes them, the keys in the schema's order.
"""
from __future__ import annotations

import errno
from json.encoder import encode_basestring_ascii as enc
from typing import Callable

from bpfprobes.kernel import openflags
from bpfprobes.present.decode import OPEN_EVENT, OPEN_SYSCALLS, Memo, Texts, cstr

# the keys of an opensnoop JSON event, in order (README: JSON lines)
LINE = ('{"type":"event","pid":%d,"tid":%d,"uid":%d,"comm":%s,"fd":%d,"err":%d,"errno":%s,'
        '"flags":%d,"flags_names":%s,"mode":%d,"syscall":%s,"path":%s,"truncated":%s,"ts":%r}')
_HEAD = OPEN_EVENT.head
_PATH = _HEAD.size


def _errno(ret: int) -> str:
    name = errno.errorcode.get(-ret) if ret < 0 else None
    return "null" if name is None else enc(name)


def lines(wall: Callable[[int], float], name: str | None = None) -> Callable[[bytes], str | None]:
    """raw sample -> its JSON line (None: its comm lacks `name`, opensnoop -n)."""
    texts, encoded = Texts(), Texts(lambda raw: enc(cstr(raw)))   # JSON strings, quoted
    errnos = Memo(_errno)
    flag_names = Memo(lambda flags: enc(openflags.describe(flags)))
    syscalls = Memo(lambda sc: enc(OPEN_SYSCALLS[sc] if sc < len(OPEN_SYSCALLS) else str(sc)))
    unpack = _HEAD.unpack_from

    def line(raw: bytes) -> str | None:
        ts, pid, tid, uid, ret, flags, mode, sc, trunc, plen, comm = unpack(raw)
        if name is not None and name not in texts[comm]:
            return None
        return LINE % (pid, tid, uid, encoded[comm], ret if ret >= 0 else -1,
                       -ret if ret < 0 else 0, errnos[ret], flags, flag_names[flags], mode,
                       syscalls[sc], encoded[raw[_PATH:_PATH + plen]],
                       "true" if trunc else "false", wall(ts))
    return line
