/* The event of `bpfprobes probe`: defined here once, mirrored once in
 * decode.py (PROBE_EVENT). A fixed header, then the probe's payload, laid out
 * per spec by probelayout.py (scalars in 8-byte slots, then string slots). */
#ifndef BPFPROBES_PROBE_EVENT_H
#define BPFPROBES_PROBE_EVENT_H

#include "context.h"
#include "config.h"

#ifndef PROBE_PAYLOAD_MAX
#define PROBE_PAYLOAD_MAX 8
#endif
#define PROBE_COMM_LEN 16
/* --folded with user stacks: a process seen for the first time, so that its maps
 * are read while it lives (the payload: probe.h's struct probe_space) */
#define PROBE_SEEN 0xffffffffU

/* The run's settings (config.h), mirrored once in runconfig.py. */
struct probe_config {
    RUN_CONFIG_FIELDS
    char comm[PROBE_COMM_LEN];  /* --comm, NUL-padded */
    u32 comm_len;       /* its bytes, 1 to 15 */
    u32 comm_set;       /* 1: only tasks of that exact name */
};
#define CONFIG_STRUCT probe_config

struct probe_event {
    u64 ts_ns;          /* bpf_ktime_get_ns() when the probe fired */
    u64 latency_ns;     /* return probes with a matching entry; 0: unknown */
    u64 ret_ip;         /* return probes: where the function returns to;
                         * entry probes at offset 0: the caller's return address */
    u64 faults;         /* bit i: argument i could not be read */
    u64 truncated;      /* bit i: string argument i filled its slot */
    u32 pid;            /* tgid */
    u32 tid;
    u32 probe;          /* index of the probe in the plan */
    struct exec_ctx ctx;        /* the CPU; with --context the preempt_count too */
    s32 kstack;         /* stack ids, or -errno; -1 when not asked for */
    s32 ustack;
    char comm[PROBE_COMM_LEN];
    u8 payload[PROBE_PAYLOAD_MAX];
};

#endif
