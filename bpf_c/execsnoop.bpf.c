/* execsnoop: execve and execveat with their arguments and result.
 *
 * Entry copies argv (only then is it readable: a successful exec replaces
 * the address space it lives in); return completes the event, because only
 * then are the result and the new program's comm known. Built with either
 * ATTACH_KPROBE (syscall entry symbols) or ATTACH_TRACEPOINT
 * (syscalls:sys_*_execve*).
 *
 * Storage, and why:
 * - argv is copied into a per-CPU scratch slot (the BPF stack is 512 bytes),
 *   then kept per thread in a hash until return. The hash is BPF_F_NO_PREALLOC:
 *   a slot is ~24 KiB, and preallocating INFLIGHT_MAX of them would pin tens
 *   of MiB for execs that are almost never concurrent; max entries still
 *   bounds it. A failed update (full, or no memory) is counted as a drop.
 * - The hash is keyed by the task_struct pointer, not the thread id: when a
 *   non-leader thread execs, the kernel gives it the leader's pid, so its tid
 *   at return differs from the one at entry.
 * - The sample is sent straight from the hash value, header plus the used
 *   part of args[] only.
 */
#include <uapi/linux/ptrace.h>

/* Without BTF, task_struct offsets may come from headers only when they are
 * this kernel's (execsnoop.py decides); never from another kernel's. */
#if defined(TASK_FROM_HEADERS) && !defined(TASK_REAL_PARENT)
#include <linux/sched.h>
#define TASK_REAL_PARENT offsetof(struct task_struct, real_parent)
#define TASK_TGID offsetof(struct task_struct, tgid)
#endif

#include "execsnoop.h"
#include "common.h"
#include "syscall_tp.h"

/* The verifier cannot relate a read's offset to its size, so a read of up to
 * EXEC_ARG_MAX bytes at any offset below EXEC_ARGS_SIZE must fit the value:
 * the slack is that room. Nothing is ever sent from it. */
struct exec_slot {
    struct exec_event e;
    char slack[EXEC_ARG_MAX];
};

BPF_F_TABLE("hash", u64, struct exec_slot, inflight, INFLIGHT_MAX, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(scratch, struct exec_slot, 1);
BPF_PERF_OUTPUT(events);

/* Copy up to MAX_ARGS arguments as length-prefixed records (execsnoop.h).
 * A plain bounded loop: kernels with BTF (>= 5.4, which PPID needs anyway)
 * verify bounded loops, and unrolling MAX_ARGS copies would only slow the
 * compile. The verifier walks every iteration: keep each one's paths few. */
static __always_inline void copy_args(struct exec_event *e, const char *const *argv)
{
    int i;

    e->argc = 0;
    e->args_len = 0;
    e->flags = 0;
    for (i = 0; i < MAX_ARGS; i++) {
        const char *arg = 0;
        if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) != 0) {
            e->flags |= EXEC_TRUNC_FAULT;
            return;
        }
        if (!arg)
            return;
        /* The offset lives in the map value, not in a register: read back, it is
         * a fresh unknown to the verifier, so paths through earlier iterations
         * do not each carry their own range into the next one. */
        u32 at = *(volatile u32 *)&e->args_len;
        if (at > EXEC_ARGS_SIZE - 3) {          /* no room for a header and a byte */
            e->flags |= EXEC_TRUNC_SPACE;
            return;
        }
        u32 size = bounded(EXEC_ARGS_SIZE - 2 - at, EXEC_ARG_MAX);
        long n = bpf_probe_read_user_str(&e->args[at + 2], size, arg);
        if (n < 0) {
            e->flags |= EXEC_TRUNC_FAULT;
            return;
        }
        if (n == 0) {
            /* "": older kernels (6.1 does) return 0 for it, its NUL not counted */
            e->args[at + 2] = 0;
            n = 1;
        }
        u16 head = n;
        if (n == size) {
            /* full: cut, or it fit exactly; the byte the NUL replaced says which */
            char c = 0;
            bpf_probe_read_user(&c, 1, arg + size - 1);
            if (c) {
                head |= EXEC_ARG_CUT;
                e->flags |= EXEC_TRUNC_ARG;
            }
        }
        e->args[at] = head & 0xff;
        e->args[at + 1] = head >> 8;
        e->args_len = at + 2 + n;
        e->argc = i + 1;
    }
    const char *more = 0;
    bpf_probe_read_user(&more, sizeof(more), &argv[MAX_ARGS]);
    if (more)
        e->flags |= EXEC_TRUNC_MAX_ARGS;
}

static __always_inline int enter(const char *const *argv, u16 syscall)
{
    u64 id = bpf_get_current_pid_tgid();
    const struct execsnoop_config *c = settings();
    if (!c || task_filtered(id, RUN(c)))
        return 0;
    u32 ppid = parent_tgid();
    if (c->ppid && ppid != c->ppid)
        return 0;
    u32 zero = 0;
    struct exec_slot *s = scratch.lookup(&zero);
    if (!s) {
        count_drop();
        return 0;
    }
    struct exec_event *e = &s->e;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->ppid = ppid;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->syscall = syscall;
    e->reserved = 0;
    copy_args(e, argv);
    u64 key = bpf_get_current_task();
    if (inflight.update(&key, s) != 0)
        count_drop();
    return 0;
}

static __always_inline int leave(void *ctx, long ret)
{
    u64 key = bpf_get_current_task();
    struct exec_slot *s = inflight.lookup(&key);
    if (!s)
        return 0;
    const struct execsnoop_config *c = settings();
    if (!c || (ret < 0 && !c->show_failed) || throttle(RUN(c))) {
        inflight.delete(&key);
        return 0;
    }
    struct exec_event *e = &s->e;
    e->ts_ns = bpf_ktime_get_ns();
    e->ret = ret;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    u64 size = bounded(offsetof(struct exec_event, args) + e->args_len, sizeof(*e));
    submitted(events.perf_submit(ctx, e, size));
    inflight.delete(&key);
    return 0;
}

#ifdef ATTACH_KPROBE
int kp_execve(struct pt_regs *ctx)
{
    return enter((const char *const *)SC_ARG(ctx, 2), SC_EXECVE);
}

int kp_execveat(struct pt_regs *ctx)
{
    return enter((const char *const *)SC_ARG(ctx, 3), SC_EXECVEAT);
}

int kr_exec(struct pt_regs *ctx)
{
    return leave(ctx, RETVAL(ctx));
}
#endif

#ifdef ATTACH_TRACEPOINT
int tp_enter_execve(struct sys_enter_ctx *ctx)
{
    return enter((const char *const *)ctx->args[1], SC_EXECVE);
}

int tp_enter_execveat(struct sys_enter_ctx *ctx)
{
    return enter((const char *const *)ctx->args[2], SC_EXECVEAT);
}

int tp_exit_exec(struct sys_exit_ctx *ctx)
{
    return leave(ctx, ctx->ret);
}
#endif
