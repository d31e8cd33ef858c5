/* Servent benchmark load generator and sink: `bench/run.py servent` compiles and drives it.
 *
 * Strategy: one process per Gnutella link, plain blocking sockets, no deflate, so the measuring
 * side costs a small fraction of a core and the servent under test is the bottleneck.
 *
 *   servent_load source HOST PORT BIND_IP LISTEN_PORT RUN_ID COUNT TEMPLATES_FILE TTL
 *       handshakes as an ultrapeer, then writes COUNT QUERY messages as fast as the socket takes
 *       them. Message i carries GUID = "GNBM" + RUN_ID (4 bytes LE) + i (8 bytes LE) and the payload
 *       of template i % T (templates: gnut's own QUERY encodings of realistic texts, each a 4-byte LE
 *       length then the payload). Prints one JSON line: sent, bytes, t0/t1 (CLOCK_MONOTONIC ns).
 *   servent_load sink HOST PORT BIND_IP LISTEN_PORT RUN_ID COUNT IDLE_MS MAX_MS
 *       handshakes as an ultrapeer, prints "ready", then counts QUERY messages whose GUID carries
 *       RUN_ID: a bitmap of COUNT bits gives exact distinct and duplicate counts; PINGs are answered
 *       with a PONG so a keep-alive never closes the link. Ends IDLE_MS after the last counted
 *       query (or at MAX_MS) and prints one JSON line: received, distinct, dups, foreign, bytes,
 *       first/last (ns).
 *
 *   servent_load idle HOST PORT COUNT ROLE WORKERS
 *       opens COUNT links (ROLE leaf or ultrapeer) from 127.1.x.y addresses: WORKERS processes each
 *       run their share of the handshakes one after the other (each prints "admitted N in S s"),
 *       then keep every link alive (answer PINGs, epoll) until killed. Leaves send no QRP table, so a servent relays them nothing: they cost only what
 *       holding a quiet link costs.
 *
 * Each link binds its own BIND_IP (127.0.0.x) and advertises its own Listen-IP port: real servents
 * allow one link per IP unless listen ports differ (gtk-gnutella), so this works against any of them.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEADER_LEN 23
#define MAX_PAYLOAD (64 * 1024)   /* the Gnutella payload cap: anything bigger is a broken stream */
#define HANDSHAKE_MAX 8192        /* a handshake block larger than this is refused */
#define RBUF (1 << 20)
#define WBUF (1 << 20)
#define MSG_PING 0x00
#define MSG_PONG 0x01
#define MSG_QUERY 0x80

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "servent_load: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Connect from bind_ip and run the 0.6 handshake (as an ultrapeer, or a leaf) without deflate. */
static int dial_as(const char *host, int port, const char *bind_ip, int listen_port, int leaf);

static int dial(const char *host, int port, const char *bind_ip, int listen_port) {
    return dial_as(host, port, bind_ip, listen_port, 0);
}

static int dial_as(const char *host, int port, const char *bind_ip, int listen_port, int leaf) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in me = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, bind_ip, &me.sin_addr) != 1) { fprintf(stderr, "bad bind ip %s\n", bind_ip); exit(2); }
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) die("bind");
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &to.sin_addr) != 1) { fprintf(stderr, "bad host %s (IPv4 address)\n", host); exit(2); }
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GNUTELLA CONNECT/0.6\r\n"
                     "User-Agent: gnut-bench/1\r\n"
                     "X-Ultrapeer: %s\r\n"
                     "X-Query-Routing: 0.2\r\n"
                     "%s"
                     "X-Degree: 32\r\n"
                     "X-Max-TTL: 4\r\n"
                     "X-Dynamic-Querying: 0.1\r\n"
                     "GGEP: 0.5\r\n"
                     "Pong-Caching: 0.1\r\n"
                     "Bye-Packet: 0.1\r\n"
                     "Listen-IP: %s:%d\r\n"
                     "Remote-IP: %s\r\n"
                     "\r\n",
                     leaf ? "False" : "True", leaf ? "" : "X-Ultrapeer-Query-Routing: 0.1\r\n",
                     bind_ip, listen_port, host);
    if (write_all(fd, req, (size_t)n) < 0) die("handshake write");
    char resp[HANDSHAKE_MAX + 1];
    size_t got = 0;
    while (got < HANDSHAKE_MAX) {
        ssize_t r = recv(fd, resp + got, 1, 0); /* byte by byte: nothing after the block is consumed */
        if (r <= 0) { fprintf(stderr, "servent_load: handshake: peer closed\n"); exit(3); }
        got += (size_t)r;
        if (got >= 4 && memcmp(resp + got - 4, "\r\n\r\n", 4) == 0) break;
    }
    resp[got] = 0;
    if (strncmp(resp, "GNUTELLA/0.6 200", 16) != 0) {
        char *eol = strstr(resp, "\r\n");
        if (eol) *eol = 0;
        fprintf(stderr, "servent_load: refused: %s\n", resp);
        exit(3);
    }
    const char *ok = "GNUTELLA/0.6 200 OK\r\n\r\n";
    if (write_all(fd, ok, strlen(ok)) < 0) die("handshake ack");
    return fd;
}

static void pong_for(int fd, const unsigned char *ping_hdr, const char *bind_ip, int listen_port) {
    unsigned char m[HEADER_LEN + 14];
    memcpy(m, ping_hdr, 16);
    m[16] = MSG_PONG;
    m[17] = 1; /* TTL */
    m[18] = 0;
    m[19] = 14; m[20] = m[21] = m[22] = 0;
    m[23] = (unsigned char)(listen_port & 0xff);
    m[24] = (unsigned char)(listen_port >> 8);
    inet_pton(AF_INET, bind_ip, m + 25);
    memset(m + 29, 0, 8);
    write_all(fd, m, sizeof m);
}

/* Calls on_msg for each complete message in buf[0:len]; returns bytes consumed. */
typedef void (*msg_fn)(const unsigned char *hdr, const unsigned char *payload, uint32_t plen, void *ctx);

static size_t frames(const unsigned char *buf, size_t len, msg_fn on_msg, void *ctx) {
    size_t off = 0;
    while (len - off >= HEADER_LEN) {
        const unsigned char *h = buf + off;
        uint32_t plen = (uint32_t)h[19] | (uint32_t)h[20] << 8 | (uint32_t)h[21] << 16 | (uint32_t)h[22] << 24;
        if (plen > MAX_PAYLOAD) { fprintf(stderr, "servent_load: payload length %u: broken stream\n", plen); exit(4); }
        if (len - off < HEADER_LEN + plen) break;
        on_msg(h, h + HEADER_LEN, plen, ctx);
        off += HEADER_LEN + plen;
    }
    return off;
}

struct sink {
    int fd;
    const char *bind_ip;
    int listen_port;
    uint32_t run_id;
    uint64_t count;
    unsigned char *bits;
    uint64_t received, distinct, dups, foreign, bytes, first, last;
};

static void sink_msg(const unsigned char *h, const unsigned char *payload, uint32_t plen, void *ctx) {
    (void)payload; (void)plen;
    struct sink *s = ctx;
    if (h[16] == MSG_PING) { pong_for(s->fd, h, s->bind_ip, s->listen_port); return; }
    if (h[16] != MSG_QUERY) return;
    uint32_t rid;
    uint64_t seq;
    memcpy(&rid, h + 4, 4);
    memcpy(&seq, h + 8, 8);
    if (memcmp(h, "GNBM", 4) != 0 || rid != s->run_id || seq >= s->count) { s->foreign++; return; }
    uint64_t t = now_ns();
    if (!s->received) s->first = t;
    s->last = t;
    s->received++;
    unsigned char bit = (unsigned char)(1u << (seq & 7));
    if (s->bits[seq >> 3] & bit) s->dups++;
    else { s->bits[seq >> 3] |= bit; s->distinct++; }
}

static int run_sink(int argc, char **argv) {
    if (argc != 10) { fprintf(stderr, "usage: sink HOST PORT BIND_IP LISTEN_PORT RUN_ID COUNT IDLE_MS MAX_MS\n"); return 2; }
    struct sink s = {0};
    s.bind_ip = argv[4];
    s.listen_port = atoi(argv[5]);
    s.run_id = (uint32_t)strtoul(argv[6], NULL, 10);
    s.count = strtoull(argv[7], NULL, 10);
    uint64_t idle_ns = strtoull(argv[8], NULL, 10) * 1000000ull;
    uint64_t max_ns = strtoull(argv[9], NULL, 10) * 1000000ull;
    s.bits = calloc((size_t)(s.count / 8 + 1), 1);
    if (!s.bits) die("calloc");
    s.fd = dial(argv[2], atoi(argv[3]), s.bind_ip, s.listen_port);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    printf("ready\n");
    fflush(stdout);
    unsigned char *buf = malloc(RBUF);
    if (!buf) die("malloc");
    size_t have = 0;
    uint64_t start = now_ns();
    for (;;) {
        ssize_t n = recv(s.fd, buf + have, RBUF - have, 0);
        if (n > 0) {
            s.bytes += (uint64_t)n;
            have += (size_t)n;
            size_t used = frames(buf, have, sink_msg, &s);
            memmove(buf, buf + used, have - used);
            have -= used;
        } else if (n == 0) {
            break; /* the servent closed the link */
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            break;
        }
        uint64_t t = now_ns(); /* after counting: s.last is never later than t */
        if (t - start > max_ns) break;
        if (s.received && t - s.last > idle_ns) break;
    }
    printf("{\"received\": %llu, \"distinct\": %llu, \"dups\": %llu, \"foreign\": %llu, \"bytes\": %llu, "
           "\"first_ns\": %llu, \"last_ns\": %llu}\n",
           (unsigned long long)s.received, (unsigned long long)s.distinct, (unsigned long long)s.dups,
           (unsigned long long)s.foreign, (unsigned long long)s.bytes, (unsigned long long)s.first,
           (unsigned long long)s.last);
    return 0;
}

struct source { int fd; const char *bind_ip; int listen_port; };

static void source_msg(const unsigned char *h, const unsigned char *payload, uint32_t plen, void *ctx) {
    (void)payload; (void)plen;
    struct source *s = ctx;
    if (h[16] == MSG_PING) pong_for(s->fd, h, s->bind_ip, s->listen_port);
}

static int run_source(int argc, char **argv) {
    if (argc != 10) { fprintf(stderr, "usage: source HOST PORT BIND_IP LISTEN_PORT RUN_ID COUNT TEMPLATES TTL\n"); return 2; }
    struct source src = {.bind_ip = argv[4], .listen_port = atoi(argv[5])};
    uint32_t run_id = (uint32_t)strtoul(argv[6], NULL, 10);
    uint64_t count = strtoull(argv[7], NULL, 10);
    int ttl = atoi(argv[9]);
    FILE *tf = fopen(argv[8], "rb");
    if (!tf) die("templates");
    static unsigned char tbuf[1 << 22];
    size_t tlen = fread(tbuf, 1, sizeof tbuf, tf);
    fclose(tf);
    size_t offs[4096], lens[4096], nt = 0;
    for (size_t o = 0; o + 4 <= tlen && nt < 4096;) {
        uint32_t l;
        memcpy(&l, tbuf + o, 4);
        if (l > MAX_PAYLOAD || o + 4 + l > tlen) break;
        offs[nt] = o + 4; lens[nt] = l; nt++;
        o += 4 + l;
    }
    if (!nt) { fprintf(stderr, "servent_load: no query templates\n"); return 2; }
    src.fd = dial(argv[2], atoi(argv[3]), src.bind_ip, src.listen_port);
    unsigned char *w = malloc(WBUF);
    unsigned char *r = malloc(RBUF);
    if (!w || !r) die("malloc");
    size_t rhave = 0, wlen = 0;
    uint64_t bytes = 0;
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < count; i++) {
        size_t k = (size_t)(i % nt);
        if (wlen + HEADER_LEN + lens[k] > WBUF) {
            if (write_all(src.fd, w, wlen) < 0) die("write");
            bytes += wlen;
            wlen = 0;
            ssize_t n = recv(src.fd, r + rhave, RBUF - rhave, MSG_DONTWAIT);
            if (n > 0) {
                rhave += (size_t)n;
                size_t used = frames(r, rhave, source_msg, &src);
                memmove(r, r + used, rhave - used);
                rhave -= used;
            }
        }
        unsigned char *h = w + wlen;
        memcpy(h, "GNBM", 4);
        memcpy(h + 4, &run_id, 4);
        memcpy(h + 8, &i, 8);
        h[16] = MSG_QUERY;
        h[17] = (unsigned char)ttl;
        h[18] = 0;
        uint32_t l = (uint32_t)lens[k];
        memcpy(h + 19, &l, 4);
        memcpy(h + HEADER_LEN, tbuf + offs[k], lens[k]);
        wlen += HEADER_LEN + lens[k];
    }
    if (wlen && write_all(src.fd, w, wlen) < 0) die("write");
    bytes += wlen;
    uint64_t t1 = now_ns();
    printf("{\"sent\": %llu, \"bytes\": %llu, \"t0_ns\": %llu, \"t1_ns\": %llu}\n", (unsigned long long)count,
           (unsigned long long)bytes, (unsigned long long)t0, (unsigned long long)t1);
    fflush(stdout);
    /* Keep the link open (answering pings) until told to stop, so nothing in flight is cut. */
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
    setsockopt(src.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    for (;;) {
        ssize_t n = recv(src.fd, r + rhave, RBUF - rhave, 0);
        if (n == 0) break;
        if (n > 0) {
            rhave += (size_t)n;
            size_t used = frames(r, rhave, source_msg, &src);
            memmove(r, r + used, rhave - used);
            rhave -= used;
        }
        if (getppid() == 1) break; /* the driver is gone */
    }
    return 0;
}

struct idle { int fd; size_t have; unsigned char buf[4096]; };

static void idle_msg(const unsigned char *h, const unsigned char *payload, uint32_t plen, void *ctx) {
    (void)payload; (void)plen;
    if (h[16] == MSG_PING) pong_for(*(int *)ctx, h, "127.1.0.1", 6346);
}

static int run_idle(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: idle HOST PORT COUNT leaf|ultrapeer WORKERS\n"); return 2; }
    const char *host = argv[2];
    int port = atoi(argv[3]), total = atoi(argv[4]), leaf = strcmp(argv[5], "leaf") == 0;
    int workers = atoi(argv[6]), w = 0;
    if (workers < 1) workers = 1;
    pid_t driver = getppid();
    for (w = 0; w < workers - 1; w++) { /* the parent keeps the last share */
        pid_t child = fork();
        if (child < 0) die("fork");
        if (child == 0) break;
    }
    int first = (int)((long long)total * w / workers), count = (int)((long long)total * (w + 1) / workers) - first;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll");
    struct idle *links = calloc((size_t)count, sizeof *links);
    if (!links) die("calloc");
    uint64_t t0 = now_ns();
    for (int i = 0; i < count; i++) {
        char ip[32];
        int g = first + i;
        snprintf(ip, sizeof ip, "127.1.%d.%d", 1 + g / 250, 1 + g % 250); /* one address per link */
        links[i].fd = dial_as(host, port, ip, 20000 + g % 40000, leaf);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, links[i].fd, &ev) < 0) die("epoll_ctl");
    }
    double s = (double)(now_ns() - t0) / 1e9;
    printf("admitted %d in %.3f s\n", count, s);
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, 500);
        if (getppid() != driver && getppid() == 1) break; /* the driver (or our parent) is gone */
        for (int e = 0; e < n; e++) {
            struct idle *l = &links[evs[e].data.u32];
            ssize_t r = recv(l->fd, l->buf + l->have, sizeof l->buf - l->have, MSG_DONTWAIT);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, l->fd, NULL);
                close(l->fd);
                continue;
            }
            l->have += (size_t)r;
            size_t used = frames(l->buf, l->have, idle_msg, &l->fd);
            if (used == 0 && l->have == sizeof l->buf) l->have = 0; /* a message larger than we keep: skip */
            memmove(l->buf, l->buf + used, l->have - used);
            l->have -= used;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "idle") == 0) return run_idle(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "sink") == 0) return run_sink(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "source") == 0) return run_source(argc, argv);
    fprintf(stderr, "usage: servent_load source|sink ...\n");
    return 2;
}
