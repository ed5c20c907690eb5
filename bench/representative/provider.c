/* Canned provider for the representative suite: Dubbo or Thrift (framed / THeader, binary).
 *
 * Answers each request with the reply its method is given in a reply table (built by
 * bench/representative/corpus.py: value only, value with attachments, exception or error status),
 * the request's id patched in, ONE write per reply (a provider that flushes per reply).
 * Dubbo heartbeats get heartbeat replies. Serves several ports (one endpoint each).
 *
 * usage: provider dubbo|thrift TABLE PORT [PORT ...]
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
#include <unistd.h>

typedef struct {
    char key[128];
    size_t key_len;
    uint32_t transport, len;
    int32_t id_off1, id_off2, id_size;
    unsigned char *data;
} reply_t;

typedef struct {
    int fd, listener;
    unsigned char *in;
    size_t in_len, in_cap;
} pconn_t;

static reply_t replies[64];
static int nreplies, dubbo_mode;
static unsigned char outbuf[1 << 16];

static uint32_t rd32le(const unsigned char *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static unsigned long long be(const unsigned char *p, int n) {
    unsigned long long v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}
static void put_be(unsigned char *p, int n, unsigned long long v) {
    for (int i = n - 1; i >= 0; i--) { p[i] = v & 0xff; v >>= 8; }
}

static int load_table(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return -1; }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(size);
    if (fread(buf, 1, size, f) != (size_t)size || memcmp(buf, "MPT1", 4) != 0) { fclose(f); return -1; }
    fclose(f);
    uint32_t count = rd32le(buf + 4);
    long pos = 8;
    for (uint32_t i = 0; i < count && i < 64; i++) {
        reply_t *r = &replies[nreplies++];
        r->key_len = rd32le(buf + pos);
        memcpy(r->key, buf + pos + 4, r->key_len < 127 ? r->key_len : 127);
        pos += 4 + r->key_len;
        r->transport = rd32le(buf + pos);
        r->len = rd32le(buf + pos + 4);
        r->id_off1 = (int32_t)rd32le(buf + pos + 8);
        r->id_off2 = (int32_t)rd32le(buf + pos + 12);
        r->id_size = (int32_t)rd32le(buf + pos + 16);
        r->data = buf + pos + 20;
        pos += 20 + r->len;
    }
    return 0;
}

static reply_t *find(const unsigned char *key, size_t len, uint32_t transport) {
    for (int i = 0; i < nreplies; i++)
        if (replies[i].transport == transport && replies[i].key_len == len && memcmp(replies[i].key, key, len) == 0) return &replies[i];
    return NULL;
}

/* A Hessian string (compact or S form, or null) at *pos; returns its bytes' start, -1 if not one. */
static long hessian_string(const unsigned char *p, size_t end, size_t *pos, size_t *len) {
    if (*pos >= end) return -1;
    unsigned b = p[*pos];
    if (b == 'N') { *len = 0; return (long)(*pos)++; }
    if (b <= 0x1f) { *len = b; *pos += 1; }
    else if (b >= 0x30 && b <= 0x33) { *len = ((b - 0x30) << 8) | p[*pos + 1]; *pos += 2; }
    else if (b == 'S') { *len = be(p + *pos + 1, 2); *pos += 3; }
    else return -1;
    long start = (long)*pos;
    *pos += *len; /* ASCII names: one byte per character */
    return *pos <= end ? start : -1;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, p + off, n - off);
        if (w < 0) { if (errno == EAGAIN || errno == EINTR) continue; return -1; }
        off += w;
    }
    return 0;
}

static int reply(int fd, reply_t *r, unsigned long long id) {
    if (r->len > sizeof outbuf) return -1;
    memcpy(outbuf, r->data, r->len);
    if (r->id_off1 >= 0) put_be(outbuf + r->id_off1, r->id_size, id);
    if (r->id_off2 >= 0) put_be(outbuf + r->id_off2, r->id_size, id);
    return write_all(fd, outbuf, r->len);
}

/* Serve the complete frames in c->in; returns bytes consumed or -1. */
static long serve(pconn_t *c) {
    size_t pos = 0;
    const unsigned char *p = c->in;
    while (1) {
        size_t n = c->in_len - pos;
        const unsigned char *f = p + pos;
        if (dubbo_mode) {
            if (n < 16) break;
            size_t flen = 16 + be(f + 12, 4);
            if (n < flen) break;
            unsigned long long id = be(f + 4, 8);
            if (f[2] & 0x20) { /* event: heartbeat reply */
                unsigned char hb[17] = {0xda, 0xbb, 0x22, 20};
                put_be(hb + 4, 8, id); put_be(hb + 12, 4, 1); hb[16] = 'N';
                if (f[2] & 0x40 && write_all(c->fd, hb, 17) < 0) return -1;
            } else {
                size_t at = 16, len;
                long s = 0;
                for (int i = 0; i < 4 && s >= 0; i++) s = hessian_string(f, flen, &at, &len); /* version, path, version, method */
                reply_t *r = s >= 0 ? find(f + s, len, 0) : NULL;
                if (!r) { fprintf(stderr, "provider: unknown method\n"); return -1; }
                if ((f[2] & 0x40) && reply(c->fd, r, id) < 0) return -1;
            }
            pos += flen;
        } else {
            if (n < 4) break;
            size_t flen = 4 + be(f, 4);
            if (n < flen) break;
            int header = f[4] == 0x0f && f[5] == 0xff;
            size_t at = header ? 14 + be(f + 12, 2) * 4 : 4;
            if (at + 8 > flen || !(f[at] & 0x80)) { fprintf(stderr, "provider: not strict binary\n"); return -1; }
            size_t namelen = be(f + at + 4, 4);
            unsigned long long seqid = be(f + at + 8 + namelen, 4);
            if (f[at + 3] != 4) { /* not ONEWAY */
                reply_t *r = find(f + at + 8, namelen, header ? 2 : 1);
                if (!r) { fprintf(stderr, "provider: unknown method\n"); return -1; }
                if (reply(c->fd, r, seqid) < 0) return -1;
            }
            pos += flen;
        }
    }
    return (long)pos;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: %s dubbo|thrift TABLE PORT [PORT ...]\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-reply closes its connection, not the provider */
    dubbo_mode = strcmp(argv[1], "dubbo") == 0;
    if (load_table(argv[2]) < 0) { fprintf(stderr, "bad reply table\n"); return 2; }
    int ep = epoll_create1(0), nlisten = argc - 3;
    pconn_t *listeners = calloc(nlisten, sizeof(pconn_t));
    for (int i = 0; i < nlisten; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3 + i]))};
        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 1024) < 0) { perror("bind"); return 1; }
        listeners[i].fd = fd;
        listeners[i].listener = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listeners[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    struct epoll_event events[256];
    while (1) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int e = 0; e < n; e++) {
            pconn_t *c = events[e].data.ptr;
            if (c->listener) {
                int fd = accept(c->fd, NULL, NULL);
                if (fd < 0) continue;
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                pconn_t *nc = calloc(1, sizeof(pconn_t));
                nc->fd = fd;
                nc->in_cap = 1 << 16;
                nc->in = malloc(nc->in_cap);
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                continue;
            }
            if (c->in_cap - c->in_len < 16384) { c->in_cap *= 2; c->in = realloc(c->in, c->in_cap); }
            ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            long used = r > 0 ? (c->in_len += r, serve(c)) : -1;
            if (used < 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                free(c->in);
                free(c);
                continue;
            }
            memmove(c->in, c->in + used, c->in_len - used);
            c->in_len -= used;
        }
    }
}
