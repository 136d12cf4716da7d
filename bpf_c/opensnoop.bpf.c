/* opensnoop: open, openat, openat2 with their return value.
 *
 * Entry stashes the arguments per thread; return builds the event, because
 * only then is the fd (or errno) known. Built with either ATTACH_KPROBE
 * (syscall entry symbols) or ATTACH_TRACEPOINT (syscalls:sys_*_open*).
 */
#include <uapi/linux/ptrace.h>
#include "common.h"
#include "syscall_tp.h"
#include "opensnoop.h"

struct open_args {
    const char *path;
    u64 flags;
    u32 mode;
    u16 syscall;
};

BPF_HASH(inflight, u64, struct open_args, INFLIGHT_MAX);
BPF_PERCPU_ARRAY(scratch, struct open_event, 1);
BPF_PERF_OUTPUT(events);

static __always_inline int flags_wanted(u64 flags)
{
#ifdef FILTER_FLAGS
    if (flags & FILTER_FLAGS)
        return 1;
#ifdef FILTER_RDONLY
    if ((flags & 3) == 0)
        return 1;
#endif
    return 0;
#else
    return 1;
#endif
}

static __always_inline int enter(const char *path, u64 flags, u32 mode, u16 syscall)
{
    u64 id = bpf_get_current_pid_tgid();
    if (task_filtered(id) || !flags_wanted(flags))
        return 0;
    struct open_args a = {.path = path, .flags = flags, .mode = mode, .syscall = syscall};
    if (inflight.update(&id, &a) != 0)
        count_drop();
    return 0;
}

static __always_inline int leave(void *ctx, long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct open_args *a = inflight.lookup(&id);
    if (!a)
        return 0;
#ifdef FILTER_FAILED
    if (ret >= 0) {
        inflight.delete(&id);
        return 0;
    }
#endif
    u32 zero = 0;
    struct open_event *e = scratch.lookup(&zero);
    if (!e) {
        inflight.delete(&id);
        return 0;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->ret = ret;
    e->flags = a->flags;
    e->mode = a->mode;
    e->syscall = a->syscall;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    int n = bpf_probe_read_user_str(e->path, sizeof(e->path), a->path);
    u32 len = n > 0 ? n : 0;
    e->truncated = 0;
    if (len >= OPEN_PATH_MAX) {
        /* the copy was cut (or fit exactly): the byte it replaced with NUL says which */
        char c = 0;
        bpf_probe_read_user(&c, 1, a->path + OPEN_PATH_MAX - 1);
        e->truncated = c != 0;
        len = OPEN_PATH_MAX;
    }
    e->path_len = len;
    inflight.delete(&id);
    submitted(events.perf_submit(ctx, e, bounded(offsetof(struct open_event, path) + len, sizeof(*e))));
    return 0;
}

/* openat2's flags and mode live in a user struct open_how {u64 flags, mode, resolve} */
static __always_inline int enter_openat2(const char *path, const u64 *how)
{
    u64 fm[2] = {};
    bpf_probe_read_user(&fm, sizeof(fm), how);
    return enter(path, fm[0], (u32)fm[1], SC_OPENAT2);
}

#ifdef ATTACH_KPROBE
int kp_open(struct pt_regs *ctx)
{
    return enter((const char *)SC_ARG(ctx, 1), SC_ARG(ctx, 2), SC_ARG(ctx, 3), SC_OPEN);
}

int kp_openat(struct pt_regs *ctx)
{
    return enter((const char *)SC_ARG(ctx, 2), SC_ARG(ctx, 3), SC_ARG(ctx, 4), SC_OPENAT);
}

int kp_openat2(struct pt_regs *ctx)
{
    return enter_openat2((const char *)SC_ARG(ctx, 2), (const u64 *)SC_ARG(ctx, 3));
}

int kr_open(struct pt_regs *ctx)
{
    return leave(ctx, RETVAL(ctx));
}
#endif

#ifdef ATTACH_TRACEPOINT
int tp_enter_open(struct sys_enter_ctx *ctx)
{
    return enter((const char *)ctx->args[0], ctx->args[1], ctx->args[2], SC_OPEN);
}

int tp_enter_openat(struct sys_enter_ctx *ctx)
{
    return enter((const char *)ctx->args[1], ctx->args[2], ctx->args[3], SC_OPENAT);
}

int tp_enter_openat2(struct sys_enter_ctx *ctx)
{
    return enter_openat2((const char *)ctx->args[1], (const u64 *)ctx->args[2]);
}

int tp_exit_open(struct sys_exit_ctx *ctx)
{
    return leave(ctx, ctx->ret);
}
#endif
