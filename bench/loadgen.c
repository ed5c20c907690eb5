/* Closed-loop load generator for length-prefixed protocols (Dubbo, Thrift framed, ...).
 *
 * Each of CONNS connections sends DEPTH copies of the request (request ids patched to be
 * distinct), waits until DEPTH replies have been framed, and repeats, for SECONDS.
 * Replies are framed by a big-endian length field: frame = len(LEN_OFF, LEN_SIZE) + LEN_ADJ.
 * Prints one JSON line: requests/s and latency percentiles (per request, batch round trip).
 *
 * usage: loadgen HOST PORT CONNS DEPTH SECONDS REQUEST_HEX LEN_OFF LEN_SIZE LEN_ADJ ID_OFF ID_SIZE
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    unsigned char *in;
    size_t in_len, in_cap;
    int waiting;
    double sent_at;
    long done;
    unsigned long long next_id;
} conn_t;

static unsigned char *batch;
static size_t req_len, batch_len;
static int depth, len_off, len_size, len_adj, id_off, id_size;
static double *lat;
static size_t lat_n, lat_cap;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned long long be(const unsigned char *p, int n) {
    unsigned long long v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

static void put_be(unsigned char *p, int n, unsigned long long v) {
    for (int i = n - 1; i >= 0; i--) { p[i] = v & 0xff; v >>= 8; }
}

static int send_batch(conn_t *c) {
    if (id_size > 0)
        for (int i = 0; i < depth; i++) put_be(batch + i * req_len + id_off, id_size, ++c->next_id);
    size_t off = 0;
    while (off < batch_len) {
        ssize_t w = write(c->fd, batch + off, batch_len - off);
        if (w < 0) {
            if (errno == EAGAIN) continue;
            return -1;
        }
        off += w;
    }
    c->waiting = depth;
    c->sent_at = now();
    return 0;
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 12) {
        fprintf(stderr, "usage: %s HOST PORT CONNS DEPTH SECONDS REQUEST_HEX LEN_OFF LEN_SIZE LEN_ADJ ID_OFF ID_SIZE\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconn = atoi(argv[3]);
    depth = atoi(argv[4]);
    double seconds = atof(argv[5]);
    const char *hex = argv[6];
    len_off = atoi(argv[7]); len_size = atoi(argv[8]); len_adj = atoi(argv[9]);
    id_off = atoi(argv[10]); id_size = atoi(argv[11]);
    req_len = strlen(hex) / 2;
    batch_len = req_len * depth;
    batch = malloc(batch_len);
    for (size_t i = 0; i < req_len; i++) batch[i] = (hexval(hex[2 * i]) << 4) | hexval(hex[2 * i + 1]);
    for (int d = 1; d < depth; d++) memcpy(batch + d * req_len, batch, req_len);
    lat_cap = 1 << 20;
    lat = malloc(lat_cap * sizeof(double));

    int ep = epoll_create1(0);
    conn_t *conns = calloc(nconn, sizeof(conn_t));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        c->in_cap = 1 << 16;
        c->in = malloc(c->in_cap);
        c->next_id = (unsigned long long)i << 40;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    double warm_end = now() + 0.5, end = warm_end + seconds;
    for (int i = 0; i < nconn; i++) send_batch(&conns[i]);
    long counted = 0, errors = 0;
    int measuring = 0;
    struct epoll_event events[256];
    while (1) {
        double t = now();
        if (!measuring && t >= warm_end) { measuring = 1; lat_n = 0; }
        if (t >= end) break;
        int n = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < n; e++) {
            conn_t *c = events[e].data.ptr;
            if (c->in_cap - c->in_len < 65536) { c->in_cap *= 2; c->in = realloc(c->in, c->in_cap); }
            ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
            if (r <= 0) { if (r < 0 && errno == EAGAIN) continue; fprintf(stderr, "connection closed\n"); return 1; }
            c->in_len += r;
            size_t pos = 0;
            while (c->in_len - pos >= (size_t)(len_off + len_size)) {
                size_t flen = be(c->in + pos + len_off, len_size) + len_adj;
                if (c->in_len - pos < flen) break;
                pos += flen;
                c->waiting--;
                if (c->waiting == 0) {
                    double done_at = now();
                    if (measuring) {
                        counted += depth;
                        if (lat_n < lat_cap) lat[lat_n++] = done_at - c->sent_at;
                    }
                    if (done_at < end && send_batch(c) < 0) errors++;
                }
            }
            memmove(c->in, c->in + pos, c->in_len - pos);
            c->in_len -= pos;
        }
    }
    qsort(lat, lat_n, sizeof(double), cmp);
    double p50 = lat_n ? lat[lat_n / 2] : 0, p99 = lat_n ? lat[(size_t)(lat_n * 0.99)] : 0;
    printf("{\"rps\": %.0f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"requests\": %ld, \"errors\": %ld}\n",
           counted / seconds, p50 * 1000, p99 * 1000, counted, errors);
    return 0;
}
