/* Closed-loop load generator for length-prefixed protocols (Dubbo, Thrift framed, ...).
 *
 * Each of CONNS connections sends DEPTH copies of the request (request ids patched to be
 * distinct), waits until DEPTH replies have been framed, and repeats, for SECONDS.
 * Replies are framed by a big-endian length field: frame = len(LEN_OFF, LEN_SIZE) + LEN_ADJ.
 * Prints one JSON line: requests/s and latency percentiles (per request, batch round trip).
 *
 * usage: loadgen HOST PORT CONNS DEPTH SECONDS REQUEST_HEX LEN_OFF LEN_SIZE LEN_ADJ ID_OFF ID_SIZE
 *
 * Corpus mode (the representative suite, bench/representative/): requests are replayed from a
 * prebuilt corpus of distinct frames, each connection starting at its own place in it; the request
 * id and a 16-hex-digit slice of the trace id are patched into every request, so no two requests
 * on the wire are identical. Latency is per request (matched by request id, or in order for RESP).
 *
 *   loadgen corpus FILE HOST PORT CONNS DEPTH SECONDS FRAMING MODE [WARMUP]
 *     FRAMING  len:OFF:SIZE:ADJ (length-prefixed, as above) | dubbo | thrift | resp
 *              (dubbo = len:12:4:16 with replies matched by the 8-byte id at 4; thrift = len:0:4:4
 *              with replies matched by the message seqid, framed or THeader; resp = RESP2 replies,
 *              matched in order)
 *     MODE     window: DEPTH requests in flight, a new one written (one write each) as each reply
 *              arrives; batch: DEPTH requests in one write, the next batch when all are answered
 *              (redis-benchmark -P)
 *   Corpus file: "MPC1", u32 count, then per frame (little-endian): u32 len, i32 id_off1,
 *   i32 id_off2, i32 id_size, i32 trace_off (-1: none), frame bytes. A frame's ids are patched
 *   big-endian at id_off1 and id_off2 (-1: none); trace_off gets 16 lowercase hex digits.
 *   Prints one JSON line: rps, p50/p99/mean ms, requests (measured), total (with warm-up), errors,
 *   unmatched replies, and the replies by class (dubbo: status and first body byte; thrift: message
 *   type and first field; resp: first byte).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
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

static int corpus_main(int argc, char **argv);

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "corpus") == 0) return corpus_main(argc, argv);
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

/* ---------------------------------------------------------------- corpus mode */

typedef struct {
    unsigned char *data;
    uint32_t len;
    int32_t id_off1, id_off2, id_size, trace_off;
} frame_t;

typedef struct {
    int fd;
    int index;
    unsigned char *in;
    size_t in_len, in_cap;
    unsigned char *out;
    size_t out_cap;
    int outstanding;
    uint32_t cursor;
    unsigned long long seq;
    double sent[1024];           /* send time by seq & 1023 (0: not outstanding) */
    unsigned long long fifo[1024]; /* RESP: seqs in send order */
    unsigned fifo_head, fifo_tail;
} cconn_t;

enum { F_LEN, F_DUBBO, F_THRIFT, F_RESP };
static frame_t *frames;
static uint32_t nframes;
static int framing, c_len_off = 12, c_len_size = 4, c_len_adj = 16, window_mode = 1, c_depth;
static unsigned long long trace_counter;
static long c_unmatched, c_errors, c_total, c_counted;
static int c_measuring;
static double c_end;
#define NCLASS 65536
static long classes[NCLASS];

static uint32_t rd32le(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static int load_corpus(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return -1; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(size);
    if (fread(buf, 1, size, f) != (size_t)size) { fclose(f); return -1; }
    fclose(f);
    if (size < 8 || memcmp(buf, "MPC1", 4) != 0) { fprintf(stderr, "not a corpus file\n"); return -1; }
    nframes = rd32le(buf + 4);
    frames = calloc(nframes, sizeof(frame_t));
    long pos = 8;
    for (uint32_t i = 0; i < nframes; i++) {
        if (pos + 20 > size) { fprintf(stderr, "corpus truncated\n"); return -1; }
        frame_t *fr = &frames[i];
        fr->len = rd32le(buf + pos);
        fr->id_off1 = (int32_t)rd32le(buf + pos + 4);
        fr->id_off2 = (int32_t)rd32le(buf + pos + 8);
        fr->id_size = (int32_t)rd32le(buf + pos + 12);
        fr->trace_off = (int32_t)rd32le(buf + pos + 16);
        pos += 20;
        if (pos + fr->len > size) { fprintf(stderr, "corpus truncated\n"); return -1; }
        fr->data = buf + pos;
        pos += fr->len;
    }
    return 0;
}

/* The request id written into a frame: small enough for Thrift's i32 seqid, low bits = ring slot. */
static unsigned long long wire_id(cconn_t *c, unsigned long long seq) {
    return ((unsigned long long)(c->index & 0x3ff) << 20) | (seq & 0xfffff);
}

/* Append the connection's next request to c->out at *len; returns 0 or -1. */
static void append_request(cconn_t *c, size_t *len, double t) {
    frame_t *fr = &frames[c->cursor];
    c->cursor = (c->cursor + 1) % nframes;
    if (*len + fr->len > c->out_cap) { c->out_cap = (*len + fr->len) * 2; c->out = realloc(c->out, c->out_cap); }
    unsigned char *p = c->out + *len;
    memcpy(p, fr->data, fr->len);
    unsigned long long seq = ++c->seq, id = wire_id(c, seq);
    if (fr->id_off1 >= 0) put_be(p + fr->id_off1, fr->id_size, id);
    if (fr->id_off2 >= 0) put_be(p + fr->id_off2, fr->id_size, id);
    if (fr->trace_off >= 0) {
        static const char hexd[] = "0123456789abcdef";
        unsigned long long v = ++trace_counter;
        for (int i = 15; i >= 0; i--) { p[fr->trace_off + i] = hexd[v & 15]; v >>= 4; }
    }
    *len += fr->len;
    c->sent[seq & 1023] = t;
    c->fifo[c->fifo_tail++ & 1023] = seq;
    c->outstanding++;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, p + off, n - off);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return -1;
        }
        off += w;
    }
    return 0;
}

/* Send requests: one write per request (window) or one write for the batch. */
static void send_requests(cconn_t *c, int count) {
    double t = now();
    if (window_mode) {
        for (int i = 0; i < count; i++) {
            size_t len = 0;
            append_request(c, &len, t);
            if (write_all(c->fd, c->out, len) < 0) c_errors++;
        }
    } else {
        size_t len = 0;
        for (int i = 0; i < count; i++) append_request(c, &len, t);
        if (write_all(c->fd, c->out, len) < 0) c_errors++;
    }
}

/* RESP: length of one complete reply at p (n bytes available), 0 if incomplete, -1 if malformed. */
static long resp_len(const unsigned char *p, size_t n) {
    const unsigned char *nl = memchr(p, '\n', n);
    if (!nl) return 0;
    size_t line = nl - p + 1;
    long v = strtol((const char *)p + 1, NULL, 10);
    switch (p[0]) {
    case '+': case '-': case ':': return line;
    case '$':
        if (v < 0) return line;
        return (size_t)(line + v + 2) <= n ? (long)(line + v + 2) : 0;
    case '*': {
        if (v < 0) return line;
        size_t pos = line;
        for (long i = 0; i < v; i++) {
            if (pos >= n) return 0;
            long l = resp_len(p + pos, n - pos);
            if (l <= 0) return l;
            pos += l;
        }
        return pos;
    }
    default: return -1;
    }
}

/* One complete reply frame: its length (0: incomplete, -1: malformed); *rid its id, *cls its class. */
static long frame_reply(const unsigned char *p, size_t n, unsigned long long *rid, int *has_id, unsigned *cls) {
    *has_id = 0;
    if (framing == F_RESP) {
        if (n < 1) return 0;
        long l = resp_len(p, n);
        if (l > 0) *cls = p[0];
        return l;
    }
    if (n < (size_t)(c_len_off + c_len_size)) return 0;
    size_t flen = be(p + c_len_off, c_len_size) + c_len_adj;
    if (n < flen) return 0;
    if (framing == F_DUBBO && flen >= 17) {
        *rid = be(p + 4, 8); *has_id = 1;
        *cls = p[3] << 8 | p[16];
    } else if (framing == F_THRIFT && flen >= 12) {
        size_t at = 4;
        if (p[4] == 0x0f && p[5] == 0xff) at = 14 + be(p + 12, 2) * 4;
        if (at + 8 <= flen) {
            size_t namelen = be(p + at + 4, 4);
            size_t sq = at + 8 + namelen;
            if (sq + 7 <= flen) {
                *rid = be(p + sq, 4); *has_id = 1;
                *cls = p[at + 3] << 8 | (p[sq + 4] ? p[sq + 6] : 0xff); /* message type, first field id */
            }
        }
    }
    return flen;
}

static int corpus_main(int argc, char **argv) {
    if (argc < 10 || argc > 11) {
        fprintf(stderr, "usage: %s corpus FILE HOST PORT CONNS DEPTH SECONDS FRAMING MODE [WARMUP]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (load_corpus(argv[2]) < 0 || nframes == 0) return 2;
    const char *host = argv[3];
    int port = atoi(argv[4]), nconn = atoi(argv[5]);
    c_depth = atoi(argv[6]);
    double seconds = atof(argv[7]), warmup = argc > 10 ? atof(argv[10]) : 0.5;
    const char *fr = argv[8];
    if (strcmp(fr, "dubbo") == 0) framing = F_DUBBO;
    else if (strcmp(fr, "thrift") == 0) { framing = F_THRIFT; c_len_off = 0; c_len_size = 4; c_len_adj = 4; }
    else if (strcmp(fr, "resp") == 0) framing = F_RESP;
    else if (sscanf(fr, "len:%d:%d:%d", &c_len_off, &c_len_size, &c_len_adj) == 3) framing = F_LEN;
    else { fprintf(stderr, "bad framing %s\n", fr); return 2; }
    window_mode = strcmp(argv[9], "batch") != 0;
    if (c_depth < 1 || c_depth > 512) { fprintf(stderr, "depth must be 1..512\n"); return 2; }
    lat_cap = 1 << 22;
    lat = malloc(lat_cap * sizeof(double));

    int ep = epoll_create1(0);
    cconn_t *conns = calloc(nconn, sizeof(cconn_t));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    for (int i = 0; i < nconn; i++) {
        cconn_t *c = &conns[i];
        c->index = i;
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        c->in_cap = 1 << 16;
        c->in = malloc(c->in_cap);
        c->out_cap = 1 << 16;
        c->out = malloc(c->out_cap);
        c->cursor = (uint32_t)((unsigned long long)i * nframes / nconn);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    double warm_end = now() + warmup;
    c_end = warm_end + seconds;
    for (int i = 0; i < nconn; i++) send_requests(&conns[i], c_depth);
    struct epoll_event events[256];
    int closed = 0;
    while (!closed) {
        double t = now();
        if (!c_measuring && t >= warm_end) { c_measuring = 1; lat_n = 0; memset(classes, 0, sizeof classes); }
        if (t >= c_end) break;
        int n = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < n; e++) {
            cconn_t *c = events[e].data.ptr;
            if (c->in_cap - c->in_len < 65536) { c->in_cap *= 2; c->in = realloc(c->in, c->in_cap); }
            ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                fprintf(stderr, "connection closed by the server\n");
                closed = 1;
                break;
            }
            c->in_len += r;
            size_t pos = 0;
            int replies = 0;
            double done_at = now();
            while (pos < c->in_len) {
                unsigned long long rid = 0;
                int has_id;
                unsigned cls = 0;
                long flen = frame_reply(c->in + pos, c->in_len - pos, &rid, &has_id, &cls);
                if (flen < 0) { fprintf(stderr, "malformed reply\n"); closed = 1; break; }
                if (flen == 0) break;
                pos += flen;
                replies++;
                unsigned long long seq;
                if (has_id) {
                    seq = rid & 0xfffff;
                } else {
                    seq = c->fifo_head < c->fifo_tail ? c->fifo[c->fifo_head & 1023] & 0xfffff : 0;
                }
                if (c->fifo_head < c->fifo_tail) c->fifo_head++;
                double sent = c->sent[seq & 1023];
                if (sent > 0 && (!has_id || ((rid >> 20) & 0x3ff) == (unsigned long long)(c->index & 0x3ff))) {
                    c->sent[seq & 1023] = 0;
                    if (c_measuring && lat_n < lat_cap) lat[lat_n++] = done_at - sent;
                } else {
                    c_unmatched++;
                }
                c->outstanding--;
                c_total++;
                if (c_measuring) { c_counted++; classes[cls & (NCLASS - 1)]++; }
                if (window_mode && done_at < c_end) send_requests(c, 1);
            }
            if (pos) { memmove(c->in, c->in + pos, c->in_len - pos); c->in_len -= pos; }
            if (!window_mode && c->outstanding <= 0 && done_at < c_end) { c->outstanding = 0; send_requests(c, c_depth); }
            (void)replies;
        }
    }
    double measured = now() - warm_end;
    if (measured > seconds) measured = seconds;
    qsort(lat, lat_n, sizeof(double), cmp);
    double p50 = lat_n ? lat[lat_n / 2] : 0, p99 = lat_n ? lat[(size_t)(lat_n * 0.99)] : 0, sum = 0;
    for (size_t i = 0; i < lat_n; i++) sum += lat[i];
    printf("{\"rps\": %.0f, \"p50_ms\": %.4f, \"p99_ms\": %.4f, \"mean_ms\": %.4f, \"requests\": %ld, \"total\": %ld, "
           "\"errors\": %ld, \"unmatched\": %ld, \"closed\": %d, \"classes\": {",
           measured > 0 ? c_counted / measured : 0, p50 * 1000, p99 * 1000, lat_n ? sum / lat_n * 1000 : 0,
           c_counted, c_total, c_errors, c_unmatched, closed);
    int first = 1;
    for (int i = 0; i < NCLASS; i++)
        if (classes[i]) { printf("%s\"%04x\": %ld", first ? "" : ", ", i, classes[i]); first = 0; }
    printf("}}\n");
    return closed ? 1 : 0;
}
