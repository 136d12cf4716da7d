/* The opensnoop event: defined here once, mirrored once in decode.py.
 * Only the used part of path[] leaves the kernel (variable-size sample). */
#ifndef BPFPROBES_OPENSNOOP_H
#define BPFPROBES_OPENSNOOP_H

#define OPEN_PATH_MAX 4096
#ifdef FULL_PATH
/* -F: the directory of a relative path first (fullpath.h), then the path itself */
#define OPEN_PATH_BUF (OPEN_PATH_MAX * 2)
#else
#define OPEN_PATH_BUF OPEN_PATH_MAX
#endif

#include "config.h"

enum open_syscall { SC_OPEN = 0, SC_OPENAT = 1, SC_OPENAT2 = 2 };

/* The run's settings (config.h), mirrored once in runconfig.py. */
struct opensnoop_config {
    RUN_CONFIG_FIELDS
    u64 flags;          /* -f: only opens with any of these flags; 0: any */
    u32 rdonly;         /* -f O_RDONLY (the flag that is no bit): read-only opens too */
    u32 failed_only;    /* -x */
};
#define CONFIG_STRUCT opensnoop_config

struct open_event {
    u64 ts_ns;          /* bpf_ktime_get_ns() at return */
    u32 pid;            /* tgid */
    u32 tid;
    u32 uid;
    s32 ret;            /* fd, or -errno */
    u64 flags;          /* open flags (u64: openat2's open_how.flags) */
    u32 mode;
    u16 syscall;        /* enum open_syscall */
    u16 truncated;      /* 1: path[] holds a prefix of a longer string; 2: (-F) its
                         * directory lost leading components */
    u32 path_len;       /* bytes of path[] sent, NUL included */
    char comm[16];
    char path[OPEN_PATH_BUF];
};

#endif
