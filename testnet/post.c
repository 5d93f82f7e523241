/* post: the sustained-runs benchmark's HTTP client. It POSTs `{}` to PATH TOTAL times, over
 * INFLIGHT kept-alive connections spread over the nodes in turn (connection c talks to node
 * c mod N), one request in flight per connection, until each request was answered 202. A request
 * answered otherwise is sent again (at most 50 times); a connection the node closed is opened
 * again (at most 50 times in all).
 *
 * It exists because the benchmark's client shares the 2 cores with the nodes it measures: Python's
 * http.client in threads took about 0.25 ms of CPU per request, a sixth of the machine at 1,000
 * runs/s; this takes a few microseconds.
 *
 * usage: post TOTAL INFLIGHT PATH HOST:PORT:TOKEN...
 * Prints "posted TOTAL in SECONDS s (RETRIES answers other than 202)" and exits 0, or says what
 * failed on stderr and exits 1.
 *
 * Build: cc -O2 -o post post.c
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { MAX_CONNS = 1024, MAX_NODES = 64, BUF = 65536, MAX_TRIES = 50 };

struct node {
    struct sockaddr_in addr;
    char request[1024];
    int request_len;
};

struct conn {
    int fd;
    struct node *node;
    int busy;      /* a request is in flight */
    int tries;     /* answers other than 202 for the request in flight */
    size_t have;   /* bytes of the answer read so far */
    char buf[BUF];
};

static struct node nodes[MAX_NODES];
static struct conn conns[MAX_CONNS];
static long sent, done, retries, reopened;

static void fail(const char *what)
{
    fprintf(stderr, "post: %s\n", what);
    exit(1);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void open_conn(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        fail("socket() failed");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&c->node->addr, sizeof c->node->addr) != 0) {
        char why[128];
        snprintf(why, sizeof why, "connecting to %s:%d: %s", inet_ntoa(c->node->addr.sin_addr),
                 ntohs(c->node->addr.sin_port), strerror(errno));
        fail(why);
    }
    c->have = 0;
}

static void send_request(struct conn *c)
{
    const char *p = c->node->request;
    int left = c->node->request_len;
    while (left > 0) {
        ssize_t n = write(c->fd, p, left);
        if (n <= 0)
            fail("writing a request failed");
        p += n;
        left -= n;
    }
    c->busy = 1;
    c->have = 0;
}

/* The connection broke: open it again and send its request again. */
static void reopen(struct conn *c)
{
    if (++reopened > MAX_TRIES)
        fail("connections closed more than 50 times");
    close(c->fd);
    open_conn(c);
    if (c->busy)
        send_request(c);
}

/* The length of a whole answer at the start of buf, or 0 while it is incomplete. */
static size_t answer_length(const char *buf, size_t have, int *status)
{
    const char *end = memmem(buf, have, "\r\n\r\n", 4);
    if (!end)
        return 0;
    size_t head = end - buf + 4;
    if (have < 12 || memcmp(buf, "HTTP/1.", 7) != 0)
        fail("the answer is not HTTP/1.x");
    *status = atoi(buf + 9);
    long body = -1;
    /* Each header line follows a CRLF; the last one ends where the blank line begins. */
    for (const char *line = memmem(buf, end + 2 - buf, "\r\n", 2); line && line < end;
         line = memmem(line, end + 2 - line, "\r\n", 2)) {
        line += 2;
        if (strncasecmp(line, "content-length:", 15) == 0)
            body = atol(line + 15);
    }
    if (body < 0)
        fail("an answer without Content-Length");
    if (head + body > BUF)
        fail("an answer larger than 64 KiB");
    return have >= head + body ? head + body : 0;
}

int main(int argc, char **argv)
{
    if (argc < 5)
        fail("usage: post TOTAL INFLIGHT PATH HOST:PORT:TOKEN...");
    long total = atol(argv[1]);
    int inflight = atoi(argv[2]);
    const char *path = argv[3];
    int n = argc - 4;
    if (total <= 0 || inflight <= 0 || inflight > MAX_CONNS || n > MAX_NODES)
        fail("TOTAL and INFLIGHT must be positive, INFLIGHT at most 1024, nodes at most 64");
    for (int i = 0; i < n; i++) {
        char host[64], token[512];
        int port;
        if (sscanf(argv[4 + i], "%63[^:]:%d:%511s", host, &port, token) != 3)
            fail("a node is HOST:PORT:TOKEN");
        nodes[i].addr.sin_family = AF_INET;
        nodes[i].addr.sin_port = htons(port);
        if (inet_pton(AF_INET, host, &nodes[i].addr.sin_addr) != 1)
            fail("a HOST is an IPv4 address");
        nodes[i].request_len = snprintf(
            nodes[i].request, sizeof nodes[i].request,
            "POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            path, host, port, token);
    }
    if (inflight > total)
        inflight = total;
    struct pollfd fds[MAX_CONNS];
    double t0 = now();
    for (int c = 0; c < inflight; c++) {
        conns[c].node = &nodes[c % n];
        open_conn(&conns[c]);
        send_request(&conns[c]);
        sent++;
    }
    while (done < total) {
        for (int c = 0; c < inflight; c++) {
            fds[c].fd = conns[c].busy ? conns[c].fd : -1;
            fds[c].events = POLLIN;
        }
        if (poll(fds, inflight, 10000) <= 0)
            fail("no answer for 10 s");
        for (int c = 0; c < inflight; c++) {
            struct conn *k = &conns[c];
            if (!(fds[c].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t got = read(k->fd, k->buf + k->have, BUF - k->have);
            if (got <= 0) {
                reopen(k);
                continue;
            }
            k->have += got;
            int status = 0;
            size_t len = answer_length(k->buf, k->have, &status);
            if (len == 0)
                continue;
            if (len != k->have)
                fail("the node answered more than was asked");
            k->busy = 0;
            if (status != 202) {
                retries++;
                if (++k->tries >= MAX_TRIES) {
                    char why[128];
                    snprintf(why, sizeof why, "a request was answered %d fifty times", status);
                    fail(why);
                }
                send_request(k);
                continue;
            }
            k->tries = 0;
            done++;
            if (sent < total) {
                sent++;
                send_request(k);
            }
        }
    }
    printf("posted %ld in %.3f s (%ld answers other than 202)\n", total, now() - t0, retries);
    return 0;
}
