/* stamp: prints the wall clock in nanoseconds since the epoch as its first act, then exits.
 *
 * The benchmark's "process start": no C library, no dynamic loader, so nothing runs before the
 * clock is read but the kernel's exec. (`date +%s%N` reads the clock only after glibc's start-up,
 * which takes about a millisecond on a VM where each `cpuid` traps to the hypervisor.) With a
 * file as its argument it appends the line there instead of printing it.
 *
 * Build: cc -O2 -static -nostdlib -fno-stack-protector -o stamp stamp.c   (x86-64 Linux)
 */
struct timespec_ {
    long tv_sec;
    long tv_nsec;
};

static long sys3(long n, long a, long b, long c)
{
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

/* The kernel starts a process with argc, argv and the environment on the stack. */
__asm__(".globl _start\n"
        "_start:\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call stamp_main\n");

__attribute__((noreturn, used)) void stamp_main(long *stack)
{
    struct timespec_ ts;
    sys3(228 /* clock_gettime */, 0 /* CLOCK_REALTIME */, (long)&ts, 0);
    unsigned long ns = (unsigned long)ts.tv_sec * 1000000000ul + (unsigned long)ts.tv_nsec;
    char buf[24];
    int i = sizeof buf;
    buf[--i] = '\n';
    do {
        buf[--i] = (char)('0' + ns % 10);
        ns /= 10;
    } while (ns);
    long fd = 1;
    if (stack[0] > 1) {
        const char *path = ((const char **)(stack + 1))[1];
        fd = sys3(2 /* open */, (long)path, 02000 | 01 | 0100 /* O_APPEND | O_WRONLY | O_CREAT */, 0644);
        if (fd < 0)
            sys3(60 /* exit */, 1, 0, 0);
    }
    sys3(1 /* write */, fd, (long)(buf + i), (long)(sizeof buf - i));
    sys3(60 /* exit */, 0, 0, 0);
    for (;;) {
    }
}
