/* A row of the in-kernel metrics table (metrics.h): its labels and its value.
 * Defined here once, mirrored once in decode.py (METRIC_KEY, METRIC_VALUE: the
 * value's fixed head; the buckets that follow are counted from its size). */
#ifndef BPFPROBES_METRIC_ROW_H
#define BPFPROBES_METRIC_ROW_H

#ifndef METRIC_SLOTS
#define METRIC_SLOTS 0
#endif

#define METRIC_ARGS 4           /* captured arguments usable as labels */
#define METRIC_COMM_LEN 16
#define METRIC_NO_ERRNO (-1)    /* the probe has no return value: no errno label */

struct metric_key {
    u32 probe;                  /* the probe's (count: the target's) index */
    u32 pid;                    /* by pid, else 0 */
    s32 err;                    /* by errno: its errno, 0: success, METRIC_NO_ERRNO: none */
    u32 reserved;
    char comm[METRIC_COMM_LEN]; /* by comm, else empty */
    u64 args[METRIC_ARGS];      /* by captured arguments, in the order asked */
};

struct metric_value {
    u64 count;
    u64 sum_ns;                 /* with buckets: the values' sum (latencies: ns) */
#if METRIC_SLOTS
    u64 negative;               /* signed values below 0: apart, as bpftrace keeps them */
    u64 slots[METRIC_SLOTS];    /* log2: slot 0 holds 0, slot i [2^(i-1), 2^i) */
#endif
};

#endif
