/* opensnoop -F: the directory a relative path is relative to, as an absolute path:
 * the task's cwd (fs->pwd), or for openat(dirfd, ...) the directory dirfd is open
 * on (files->fdt->fd[dirfd]->f_path). Walked up dentry by dentry, crossing mounts
 * to their mountpoints, to the root of the task's mount namespace (a container's
 * paths as the container sees them), then written top-down into the event's path.
 * At most FULL_DEPTH steps; a deeper directory, or one past the buffer, is cut (its
 * leading components dropped; the caller marks the event).
 *
 * Offsets are the running kernel's, from BTF (codegen defines, opensnoop.py):
 * TASK_FS, TASK_FILES, FS_PWD, FILES_FDT, FDT_FD, FILE_F_PATH, PATH_MNT, PATH_DENTRY,
 * DENTRY_PARENT, DENTRY_NAME, QSTR_NAME, VFSMOUNT_ROOT, MOUNT_MNT, MOUNT_PARENT,
 * MOUNT_MOUNTPOINT.
 */
#ifndef BPFPROBES_FULLPATH_H
#define BPFPROBES_FULLPATH_H

#define FULL_DEPTH 64               /* steps up: components and mount crossings */
#define FULL_NAME_MAX 256              /* NAME_MAX + its NUL */
#define FULL_DIR_LIMIT (OPEN_PATH_MAX - FULL_NAME_MAX - 2)
#define AT_FDCWD_VALUE (-100)

struct full_parts {
    const char *name[FULL_DEPTH];      /* innermost first; 0 where a step crossed a mount */
    u32 steps;                         /* steps taken */
    u32 off;                           /* the directory's length so far (see full_dir) */
};
BPF_PERCPU_ARRAY(full_scratch, struct full_parts, 1);

#define KREAD(dst, ptr, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(ptr) + (off))

/* (mnt, dentry) of the directory a relative path starts from: 0 when unknown. */
static __always_inline int full_start(s32 dirfd, void **mnt, void **dentry)
{
    void *task = (void *)bpf_get_current_task(), *at = 0;
    if (dirfd == AT_FDCWD_VALUE) {
        void *fs = 0;
        KREAD(fs, task, TASK_FS);
        if (!fs)
            return 0;
        at = (char *)fs + FS_PWD;
    } else {
        void *files = 0, *fdt = 0, **fds = 0, *file = 0;
        if (dirfd < 0)
            return 0;
        KREAD(files, task, TASK_FILES);
        if (!files)
            return 0;
        KREAD(fdt, files, FILES_FDT);
        if (!fdt)
            return 0;
        KREAD(fds, fdt, FDT_FD);
        if (!fds)
            return 0;
        /* a dirfd past the table reads what follows: a pointer that leads nowhere
         * valid fails its reads, and the open itself failed with EBADF anyway */
        KREAD(file, fds, (u64)(u32)dirfd * sizeof(void *));
        if (!file)
            return 0;
        at = (char *)file + FILE_F_PATH;
    }
    KREAD(*mnt, at, PATH_MNT);
    KREAD(*dentry, at, PATH_DENTRY);
    return *mnt && *dentry;
}

/* Write "/a/b/c/" (the directory, with a trailing slash) at the start of `buf`
 * (OPEN_PATH_BUF bytes); returns its length. `cut`: set when components were left
 * out (too deep, too long). Each step of the walk records a name or, where it
 * crosses a mount, none: every path through a step then looks alike to the
 * verifier, which can prune them (a separate count of names cannot). */
static __always_inline u32 full_dir(char *buf, s32 dirfd, u16 *cut)
{
    void *vfsmnt = 0, *d = 0;
    u32 zero = 0, off = 1;
    struct full_parts *parts = full_scratch.lookup(&zero);
    if (!parts || !full_start(dirfd, &vfsmnt, &d))
        return 0;
    void *mnt = (char *)vfsmnt - MOUNT_MNT;     /* the struct mount around it */
    parts->steps = FULL_DEPTH;
    for (u32 i = 0; i < FULL_DEPTH; i++) {
        void *root = 0, *parent = 0, *up = 0;
        parts->name[i] = 0;
        KREAD(root, vfsmnt, VFSMOUNT_ROOT);
        KREAD(parent, d, DENTRY_PARENT);
        KREAD(up, mnt, MOUNT_PARENT);
        if (d == root) {                        /* the top of this mount */
            if (!up || up == mnt) {             /* the namespace's root: done */
                parts->steps = i;
                break;
            }
            KREAD(d, mnt, MOUNT_MOUNTPOINT);    /* where it is mounted, one mount up */
            mnt = up;
            vfsmnt = (char *)mnt + MOUNT_MNT;
            continue;
        }
        if (!parent || parent == d) {           /* a filesystem's root, not a mount's */
            parts->steps = i;
            break;
        }
        KREAD(parts->name[i], d, DENTRY_NAME + QSTR_NAME);
        d = parent;
    }
    /* read back from the map: one unknown count for the verifier, not one state per
     * exit of the walk above */
    u32 steps = parts->steps;
    if (steps >= FULL_DEPTH)                    /* deeper than the walk goes */
        *cut = 1;
    buf[0] = '/';
    for (int j = FULL_DEPTH - 1; j >= 0; j--) {
        const char *name = parts->name[j];
        if (j >= steps || !name)
            continue;
        /* off passes through the map: an older verifier (6.1) that knows it small here
         * still follows the test's impossible branch (the compiler puts the constant on
         * the left, which it does not evaluate) with contradictory bounds, and refuses
         * the program; read back, it is any value, and the mask bounds the writes below
         * (a no-op: off <= FULL_DIR_LIMIT + 256 here) */
        parts->off = off;
        off = *(volatile u32 *)&parts->off & (OPEN_PATH_MAX - 1);
        if (off > FULL_DIR_LIMIT) {
            *cut = 1;
            break;
        }
        long k = bpf_probe_read_kernel_str(buf + off, FULL_NAME_MAX, name);
        if (k > 1) {
            off += k - 1;                       /* without its NUL: the slash goes there */
            buf[off & (OPEN_PATH_BUF - 1)] = '/';
            off++;
        }
    }
    return off;
}

#endif
