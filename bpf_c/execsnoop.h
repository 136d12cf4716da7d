/* The execsnoop event: defined here once, mirrored once in decode.py.
 *
 * args[] holds one record per captured argument: a 2-byte little-endian
 * header (bits 0-14: bytes that follow, NUL included; bit 15: the argument
 * was cut) then the bytes. A length, not a NUL separator, because a cut must
 * be marked on the very argument it hit. Only the used part of args[] leaves
 * the kernel (variable-size sample).
 */
#ifndef BPFPROBES_EXECSNOOP_H
#define BPFPROBES_EXECSNOOP_H

#define EXEC_ARGS_SIZE 16384    /* all captured arguments, records included */
#define EXEC_ARG_MAX 8192       /* one argument (NUL included); longer ones are cut */
#define EXEC_ARG_CUT 0x8000     /* record header bit */

#include "config.h"

enum exec_syscall { SC_EXECVE = 0, SC_EXECVEAT = 1 };

/* The run's settings (config.h), mirrored once in runconfig.py. */
struct execsnoop_config {
    RUN_CONFIG_FIELDS
    u32 ppid;           /* -P: only children of this process; 0: any */
    u32 show_failed;    /* -x: failed execs too */
};
#define CONFIG_STRUCT execsnoop_config

/* why argv is incomplete (flags) */
#define EXEC_TRUNC_MAX_ARGS 1   /* more arguments than --max-args */
#define EXEC_TRUNC_SPACE 2      /* args[] ran out: more arguments not copied */
#define EXEC_TRUNC_ARG 4        /* an argument was cut (its record says which) */
#define EXEC_TRUNC_FAULT 8      /* argv or an argument could not be read from user memory */

struct exec_event {
    u64 ts_ns;          /* bpf_ktime_get_ns() at return */
    u32 pid;            /* tgid */
    u32 tid;            /* thread that called exec (before exec made it the leader) */
    u32 ppid;           /* real parent's tgid */
    u32 uid;
    s32 ret;            /* 0, or -errno */
    u16 syscall;        /* enum exec_syscall */
    u16 flags;          /* EXEC_TRUNC_* */
    u16 argc;           /* records in args[] */
    u16 reserved;
    u32 args_len;       /* bytes of args[] used */
    char comm[16];      /* after a successful exec: the new program's */
    char args[EXEC_ARGS_SIZE];
};

#endif
