/* Run-time settings of a program: what changes from run to run (task filters,
 * our own PID, a rate limit, a tool's own filters) is data in one read-only
 * array map, `config` (one entry), written by the loader before anything is
 * attached, never by the program (BPF_F_RDONLY_PROG). The bytecode depends
 * only on the program's shape, so one cached program serves every run.
 *
 * Each program's struct <tool>_config (its header) starts with these fields;
 * it is mirrored once in runconfig.py. Zero means "no filter" everywhere but
 * uid, where 0 is root: ANY_UID means none there.
 */
#ifndef BPFPROBES_CONFIG_H
#define BPFPROBES_CONFIG_H

#define ANY_UID 0xffffffffU

#define RUN_CONFIG_FIELDS                                                    \
    u32 skip_pid;       /* our own process (its reads are noise); 0: none */  \
    u32 pid;            /* only this process (tgid); 0: any */               \
    u32 tid;            /* only this thread; 0: any */                       \
    u32 uid;            /* only this user; ANY_UID: any */                   \
    u64 cgroup;         /* only this cgroup v2 (its id); 0: any */           \
    u64 rate_limit;     /* events sent a second at most; 0: no limit */      \
    u32 rate_per_cpu;   /* 1: the limit holds on each CPU, 0: on all */      \
    u32 reserved;

struct run_config {
    RUN_CONFIG_FIELDS
};

#endif
