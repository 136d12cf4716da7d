/* In-kernel metrics: a call counted (and, with METRIC_SLOTS, its latency put in
 * a log2 bucket) under its labels, in a per-CPU hash; nothing per event leaves
 * the kernel. Used by count.bpf.c (--by, serve's [[count]]) and by probe.h in
 * metrics mode (serve's [[probe]] and [[opensnoop]], probe --prometheus).
 *
 * Cardinality is bounded by the table: METRIC_SERIES label sets at most. A
 * call whose label set finds no room goes to its probe's `metric_other` row
 * (other="true") and is counted in `series_dropped`: a storm of random comms
 * costs a fixed table, never more, and no call goes uncounted.
 *
 * Defines: METRIC_SERIES (label sets kept), METRIC_PROBES (probes or targets:
 * the other rows), METRIC_SLOTS (0: counts only; else buckets of a value: a
 * latency, or a captured argument for probe --hist), METRIC_LINEAR (a bucket's
 * width; else log2 buckets as bpftrace's hist(): [0], [1], [2, 4), [4, 8) ...),
 * METRIC_DIV (the value is divided by it first: a latency in us or ms). A
 * signed value (each probe says) that is negative is counted apart (`negative`).
 * The row (metric_row.h) is mirrored once in decode.py (METRIC_KEY, METRIC_VALUE).
 */
#ifndef BPFPROBES_METRICS_H
#define BPFPROBES_METRICS_H

#include "metric_row.h"

BPF_PERCPU_HASH(metrics, struct metric_key, struct metric_value, METRIC_SERIES);
BPF_PERCPU_ARRAY(metric_other, struct metric_value, METRIC_PROBES);
BPF_PERCPU_ARRAY(series_dropped, u64, 1);
/* a new row's first value, never written: a map value, not 300 bytes of stack */
BPF_PERCPU_ARRAY(metric_blank, struct metric_value, 1);

/* floor(log2(v)) for v > 0, 0 for 0: six compares, no loop for the verifier. */
static __always_inline u32 metric_log2(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

#ifndef METRIC_DIV
#define METRIC_DIV 1
#endif

/* The slot of a value: linear (v / METRIC_LINEAR), or log2 with 0 and 1 apart (slot
 * i >= 1 holds [2^(i-1), 2^i)); the last slot takes everything above. */
static __always_inline u32 metric_slot(u64 v)
{
    v /= METRIC_DIV;
#ifdef METRIC_LINEAR
    u64 slot = v / METRIC_LINEAR;
#else
    u64 slot = v ? metric_log2(v) + 1 : 0;
#endif
    /* the compare must stay on `slot`: folded into one on v (v < 80 for width 2),
     * it leaves the verifier no bound on the index */
    asm volatile("" : "+r"(slot));
    return slot < METRIC_SLOTS ? (u32)slot : METRIC_SLOTS - 1;
}

static __always_inline void metric_bump(struct metric_value *m, u64 value, int timed, int sign)
{
    m->count++;
#if METRIC_SLOTS
    if (!timed)
        return;
    if (sign && (s64)value < 0) {
        m->negative++;
        return;
    }
    m->sum_ns += value;
    m->slots[metric_slot(value)]++;
#endif
}

/* The errno of a call that returned `ret` (-4095..-1), else 0: success. */
static __always_inline s32 metric_errno(u64 ret)
{
    s64 r = (s64)ret;
    return r < 0 && r >= -4095 ? (s32)-r : 0;
}

/* One call under the labels in `key` (its value bucketed when `timed`; `sign`: the
 * value is signed). The per-CPU
 * hash needs no lock: this CPU's copy of the row is ours while we run. */
static __always_inline void metric_add(struct metric_key *key, u64 value, int timed, int sign)
{
    const struct run_config *c = RUN(settings());
    if (!c || throttle(c))
        return;
    u32 probe = key->probe, first = 0;
    struct metric_value *blank = metric_blank.lookup(&first);
    struct metric_value *m = blank ? metrics.lookup_or_try_init(key, blank) : 0;
    if (m) {
        metric_bump(m, value, timed, sign);
        return;
    }
    m = metric_other.lookup(&probe);
    if (m)
        metric_bump(m, value, timed, sign);
    else
        count_drop();
    u64 *n = series_dropped.lookup(&first);
    if (n)
        (*n)++;
}

#endif
