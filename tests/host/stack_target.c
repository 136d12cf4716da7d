/* Target of the --folded tests: call chains known exactly.
 *
 * usage: stack_target N M
 * Waits for a line on stdin (the tracer is live), calls a() -> b() -> c() N times,
 * a() -> c() M times and r(2) (r -> r -> r) M times, then waits for stdin to close
 * before it exits, so a test
 * can let it exit at a moment of its choosing (after the tracer has seen it).
 * Built with frame pointers and no inlining or tail calls: each call is a frame. */
#include <stdio.h>
#include <stdlib.h>

#define FRAME __attribute__((noinline, noipa, used))

volatile long sink;

FRAME void c(long i) { sink += i; }
FRAME void b(long i) { c(i); sink++; }
FRAME void a(long i, int via_b) { if (via_b) b(i); else c(i); sink++; }
FRAME void r(long n) { if (n > 0) r(n - 1); sink++; }     /* recursion: one call site */

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    long n = atol(argv[1]), m = atol(argv[2]);
    if (getchar() == EOF)
        return 3;
    for (long i = 0; i < n; i++)
        a(i, 1);
    for (long i = 0; i < m; i++)
        a(i, 0);
    for (long i = 0; i < m; i++)
        r(2);
    printf("done\n");
    fflush(stdout);
    while (getchar() != EOF)
        ;
    return 0;
}
