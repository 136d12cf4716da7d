/* The bench's workload: open+close of one unique path N times, as fast as it can.
 *
 * usage: workload N PATH [MARKER]
 * The path need not exist: open() fails with ENOENT, which is what a storm of
 * probing opens looks like and keeps the filesystem out of the measurement; the
 * tracers see every attempt (opensnoop reports failures too). MARKER, if given,
 * is opened once first and then the program waits for a line on stdin, so the
 * bench can tell when a tracer is live before the storm starts.
 * Prints the elapsed nanoseconds of the N opens on stdout.
 *
 * usage: workload getppid N
 * N getppid() calls instead: a syscall no tracer here traces, to measure what a
 * tracer costs the rest of the system (a program on every syscall's exit runs
 * for these too).
 *
 * usage: workload exec N TOKEN
 * N fork+execve of this program as `workload exit TOKEN` (which exits at once),
 * one after another: the exec storm execsnoop and its peers trace. Prints the
 * elapsed nanoseconds of the N.
 *
 * usage: workload paced N RATE PATH
 * N open+close of PATH at RATE a second (held to the clock every 64 opens):
 * the sustained rate a tracer keeps up with, with nothing lost.
 *
 * usage: workload call N TOKEN
 * N calls of bench_call(i, N, TOKEN), a function the compiler may not inline or
 * drop: the uprobe storm (a probe on it with two numbers and a string).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* the uprobe storm's target: kept out of line and in the symbol table */
__attribute__((noinline)) long bench_call(long i, long n, const char *token)
{
    __asm__ volatile("" ::: "memory");
    return i + n + token[0];
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s N PATH\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[1], "getppid") == 0) {
        long n = atol(argv[2]);
        long long t0 = now_ns();
        for (long i = 0; i < n; i++)
            syscall(SYS_getppid);       /* not glibc's wrapper: never cached */
        printf("%lld\n", now_ns() - t0);
        return 0;
    }
    if (strcmp(argv[1], "exit") == 0)
        return 0;
    if (strcmp(argv[1], "exec") == 0 && argc >= 4) {
        long n = atol(argv[2]);
        /* every string on the stack: a forked child has no page table entries yet
         * for the program's read-only data, and a tracer reading argv at execve
         * (which cannot fault pages in) would find "exit" missing */
        char word[] = "exit";
        char *child[] = {argv[0], word, argv[3], NULL};
        long long t0 = now_ns();
        for (long i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                execv("/proc/self/exe", child);
                _exit(127);
            }
            if (pid < 0 || waitpid(pid, NULL, 0) < 0) {
                perror("workload exec");
                return 1;
            }
        }
        printf("%lld\n", now_ns() - t0);
        return 0;
    }
    if (strcmp(argv[1], "paced") == 0 && argc >= 5) {
        long n = atol(argv[2]);
        double ns_each = 1e9 / atof(argv[3]);
        long long t0 = now_ns();
        for (long i = 0; i < n; i++) {
            if ((i & 63) == 0) {
                long long due = t0 + (long long)(i * ns_each), wait;
                while ((wait = due - now_ns()) > 0) {
                    struct timespec ts = {wait / 1000000000LL, wait % 1000000000LL};
                    nanosleep(&ts, NULL);
                }
            }
            int fd = open(argv[4], O_RDONLY);
            if (fd >= 0)
                close(fd);
        }
        printf("%lld\n", now_ns() - t0);
        return 0;
    }
    if (strcmp(argv[1], "call") == 0 && argc >= 4) {
        long n = atol(argv[2]);
        volatile long sink = 0;
        long long t0 = now_ns();
        for (long i = 0; i < n; i++)
            sink += bench_call(i, n, argv[3]);
        printf("%lld\n", now_ns() - t0);
        return (int)(sink & 0);
    }
    long n = atol(argv[1]);
    const char *path = argv[2];
    long long t0 = now_ns();
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0)
            close(fd);
    }
    long long t1 = now_ns();
    printf("%lld\n", t1 - t0);
    return 0;
}
