/* count: how often functions and tracepoints fire, counted in the kernel.
 *
 * Kernel functions share one program that tells them apart by the attach
 * cookie each was given (its target index, 5.15+): attached through one
 * kprobe_multi link (count_multi, loaded for that link type) or one link per
 * function (count_cookie), a descriptor each rather than a program and two.
 * Every other target has a tiny function of its own (COUNTER(n), emitted by
 * codegen.py). All of them add to one per-CPU table: by target index alone (a per-CPU array,
 * no locks, no hashing), or with COUNT_BY_PID / COUNT_BY_COMM by (target,
 * pid, comm) in metrics.h's table of METRIC_SERIES rows, whose overflow goes
 * to the target's `other` row. Nothing leaves the kernel but the table, read
 * every interval.
 */
#include <uapi/linux/ptrace.h>
#include "count.h"
#include "common.h"

#if defined(COUNT_BY_PID) || defined(COUNT_BY_COMM)
#define METRIC_PROBES COUNT_TARGETS
#define METRIC_SLOTS 0
#include "metrics.h"

static __always_inline int count(u32 target)
{
    u64 id = bpf_get_current_pid_tgid();
    const struct count_config *c = settings();
    if (!c || task_filtered(id, RUN(c)))
        return 0;
    struct metric_key key = {.probe = target};
#ifdef COUNT_BY_PID
    key.pid = id >> 32;
#endif
#ifdef COUNT_BY_COMM
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
#endif
    metric_add(&key, 0, 0, 0);
    return 0;
}
#else
BPF_PERCPU_ARRAY(counts, u64, COUNT_TARGETS);

static __always_inline int count(u32 target)
{
    const struct count_config *c = settings();
    if (!c || task_filtered(bpf_get_current_pid_tgid(), RUN(c)))
        return 0;
    u64 *n = counts.lookup(&target);
    if (n)
        (*n)++;
    return 0;
}
#endif

#define COUNTER(n) int count_##n(void *ctx) { return count(n); }

int count_cookie(struct pt_regs *ctx) { return count(bpf_get_attach_cookie(ctx)); }
int count_multi(struct pt_regs *ctx) { return count(bpf_get_attach_cookie(ctx)); }
