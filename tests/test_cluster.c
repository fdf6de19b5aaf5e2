/*
 * tests/test_cluster.c: deploy/local-cluster.sh with 3 replicas of the
 * fixture model behind HAProxy (deploy/haproxy.cfg), as a fleet is run.
 *
 *   - the same image always lands on the same replica (X-Tasam-Instance)
 *     and hits its cache, whether it is named by the X-Tasam-Image-Id
 *     header, by image_id in the JSON body or in GET /v1/embeddings/{id};
 *   - different images spread over the replicas;
 *   - kill -9 of the replica that holds an image: tasam-bench's requests
 *     through the proxy keep succeeding (HAProxy retries them on another
 *     replica; a request by image_id that reaches a replica without the
 *     image is sent again with it) and the image settles on one survivor;
 *   - SIGTERM of the script stops every process it started.
 *
 * Needs the fixtures, haproxy and curl (make deps); skips saying which is
 * missing. The replicas run with --cpu-threads 1 so that three fit on a
 * small machine; the load phase is 3 seconds.
 */
#include "tests/tserver.h"

static pid_t g_cluster;        /* the script, 0 when not running */
static char g_root[PATH_MAX];  /* its --state-root */
static char g_clog[PATH_MAX];  /* its stdout and stderr */
static char g_bench[PATH_MAX]; /* tasam-bench beside this test's build */
static int g_port;             /* the proxy */
static char g_dog_sha[65];

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &al) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int read_pid(const char *rel)
{
    char p[PATH_MAX + 64];
    size_t n;
    snprintf(p, sizeof p, "%s/%s", g_root, rel);
    char *s = (char *)t_read_file(p, &n);
    int pid = s && n ? atoi(s) : 0;
    free(s);
    return pid;
}

static void show_cluster_log(void)
{
    size_t n;
    char *s = (char *)t_read_file(g_clog, &n);
    if (s) {
        fprintf(stderr, "---- local-cluster.sh output ----\n%.*s----\n", (int)(n > 4000 ? 4000 : n),
                n > 4000 ? s + n - 4000 : s);
        free(s);
    }
}

/* POST a request file (JSON) to the proxy with optional headers; returns
 * the status, the instance that answered and the embedding cache verdict. */
static int post(const char *route, const char *file, const char *headers, char *inst, size_t il,
                char *cache, size_t cl)
{
    hc_response r;
    ts_extra x = {.headers = headers};
    int st = http_full(g_port, "POST", route, "application/json", file, &x, &r);
    const char *i = hc_response_header(&r, "X-Tasam-Instance");
    snprintf(inst, il, "%s", i ? i : "");
    if (cache) {
        json_t *j = st ? json_loadb(r.body, r.len, 0, NULL) : NULL;
        const char *c =
            json_string_value(json_object_get(json_object_get(j, "cache"), "embedding"));
        snprintf(cache, cl, "%s", c ? c : "");
        json_decref(j);
    }
    hc_response_free(&r);
    return st;
}

static void test_cluster_start(void)
{
    T_NEED_FIXTURES();
    if (!ts_have("haproxy"))
        T_SKIP("haproxy is not installed (make deps installs it)");
    if (!ts_have("curl"))
        T_SKIP("curl is not installed (make deps installs it)");
    g_port = free_port();
    T_REQUIRE(g_port > 0, "no free port");
    snprintf(g_root, sizeof g_root, "%s/cluster", g_tmp);
    snprintf(g_clog, sizeof g_clog, "%s/cluster.log", g_tmp);
    char port[16];
    snprintf(port, sizeof port, "%d", g_port);
    char ckpt[PATH_MAX];
    snprintf(ckpt, sizeof ckpt, "%s", t_fixture("sam_tiny.safetensors"));
    const char *argv[] = {"deploy/local-cluster.sh",
                          "--replicas",
                          "3",
                          "--port",
                          port,
                          "--checkpoint",
                          ckpt,
                          "--state-root",
                          g_root,
                          "--device",
                          "cpu",
                          "--tasamd",
                          g_tasamd,
                          "--",
                          "--cpu-threads",
                          "1",
                          NULL};
    pid_t pid = fork();
    T_REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        int fd = open(g_clog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    g_cluster = pid;
    double t0 = now_s();
    int ready = 0;
    while (!ready && now_s() - t0 < 240) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            g_cluster = 0;
            break;
        }
        size_t n;
        char *s = (char *)t_read_file(g_clog, &n);
        if (s) {
            ready = memmem(s, n, "local-cluster: ready:", 21) != NULL;
            free(s);
        }
        if (!ready)
            usleep(100000);
    }
    if (!ready)
        show_cluster_log();
    T_REQUIRE(ready, "the cluster did not come up");
    /* The proxy answers for every replica: health and info through it. */
    int st;
    json_t *info = http_json(g_port, "GET", "/v1/info", NULL, NULL, NULL, &st);
    const char *inst = json_string_value(json_object_get(info, "instance"));
    T_CHECK(st == 200 && inst && inst[0] == 'r', "info through the proxy: %d %s", st,
            inst ? inst : "(none)");
    json_decref(info);
}

#define NEED_CLUSTER()                                                                             \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        if (!g_cluster)                                                                            \
            T_SKIP("the cluster is not running");                                                  \
    } while (0)

/* The same image, named three ways, always on one replica; cache hits from
 * the second request on. */
static void test_same_image_same_replica(void)
{
    NEED_CLUSTER();
    char path[PATH_MAX], idreq[PATH_MAX], hdr[128], first[64], inst[64], cache[16];
    write_request(path, sizeof path, g_dog_b64, json_pack("{s:[[i,i,i]]}", "points", 400, 294, 1));
    snprintf(hdr, sizeof hdr, "X-Tasam-Image-Id: %s\r\n", g_dog_sha);
    T_REQUIRE(post("/v1/segment", path, hdr, first, sizeof first, cache, sizeof cache) == 200,
              "first request");
    T_CHECK(first[0], "no X-Tasam-Instance through the proxy");
    for (int i = 0; i < 4; i++) {
        int st = post("/v1/segment", path, hdr, inst, sizeof inst, cache, sizeof cache);
        T_CHECK(st == 200 && !strcmp(inst, first) && !strcmp(cache, "hit"),
                "repeat %d: status %d on %s (first on %s), cache %s", i, st, inst, first, cache);
    }
    /* By image_id in the body, no header: HAProxy reads the body. */
    write_request(idreq, sizeof idreq, NULL,
                  json_pack("{s:s,s:[[i,i,i]]}", "image_id", g_dog_sha, "points", 100, 100, 1));
    for (int i = 0; i < 3; i++) {
        int st = post("/v1/segment", idreq, NULL, inst, sizeof inst, cache, sizeof cache);
        T_CHECK(st == 200 && !strcmp(inst, first), "image_id in the body: %d on %s, want %s", st,
                inst, first);
    }
    /* GET /v1/embeddings/{id}: by the path. */
    char url[128];
    snprintf(url, sizeof url, "/v1/embeddings/%s", g_dog_sha);
    for (int i = 0; i < 3; i++) {
        hc_response r;
        int st = http_full(g_port, "GET", url, NULL, NULL, NULL, &r);
        const char *h = hc_response_header(&r, "X-Tasam-Instance");
        T_CHECK(st == 200 && h && !strcmp(h, first), "GET embedding: %d on %s, want %s", st,
                h ? h : "(none)", first);
        hc_response_free(&r);
    }
}

/* Distinct images spread, and each stays where it went. */
static void test_images_spread(void)
{
    NEED_CLUSTER();
    enum { N = 8 };
    char where[N][64], names[3][64] = {"", "", ""};
    int distinct = 0;
    for (unsigned i = 0; i < N; i++) {
        char img[PATH_MAX], path[PATH_MAX], hdr[128], sha[65];
        char *b64 = make_png(100 + i, img, sizeof img);
        size_t n;
        uint8_t *bytes = t_read_file(img, &n), d[32];
        T_REQUIRE(b64 && bytes, "image %u", i);
        eng_sha256(bytes, n, d);
        eng_sha256_hex(d, sha);
        free(bytes);
        write_request(path, sizeof path, b64, NULL);
        free(b64);
        snprintf(hdr, sizeof hdr, "X-Tasam-Image-Id: %s\r\n", sha);
        T_CHECK(post("/v1/embeddings", path, hdr, where[i], sizeof where[i], NULL, 0) == 200,
                "image %u", i);
        char again[64], cache[16];
        T_CHECK(post("/v1/embeddings", path, hdr, again, sizeof again, cache, sizeof cache) ==
                        200 &&
                    !strcmp(again, where[i]) && !strcmp(cache, "hit"),
                "image %u went to %s, then %s (%s)", i, where[i], again, cache);
        int seen = 0;
        for (int k = 0; k < distinct; k++)
            seen |= !strcmp(names[k], where[i]);
        if (!seen && distinct < 3)
            snprintf(names[distinct++], sizeof names[0], "%s", where[i]);
    }
    T_CHECK(distinct >= 2, "%d images all went to %s", N, names[0]);
}

/* Load through the proxy while the replica holding dog.jpg dies. */
static void test_kill9_one_replica(void)
{
    NEED_CLUSTER();
    if (access(g_bench, X_OK) != 0)
        T_SKIP("%s is not built", g_bench);
    char path[PATH_MAX], hdr[128], owner[64];
    write_request(path, sizeof path, g_dog_b64, NULL);
    snprintf(hdr, sizeof hdr, "X-Tasam-Image-Id: %s\r\n", g_dog_sha);
    T_REQUIRE(post("/v1/embeddings", path, hdr, owner, sizeof owner, NULL, 0) == 200, "owner");
    char rel[80];
    snprintf(rel, sizeof rel, "%.60s/pid", owner);
    int victim = read_pid(rel);
    T_REQUIRE(victim > 0 && kill(victim, 0) == 0, "pid of %s", owner);

    static const char *const served = "tasam_requests_total{route=\"segment\",code=\"200\"}";
    snprintf(rel, sizeof rel, "%.60s/port", owner);
    int vport = read_pid(rel);
    char *m0 = vport > 0 ? get_metrics(vport) : NULL;
    double base = m0 ? metric(m0, served) : -1;
    free(m0);
    T_REQUIRE(base >= 0, "the metrics of %s", owner);
    char url[64], out[PATH_MAX];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", g_port);
    tmp_name(out, sizeof out, ".json");
    pid_t b = fork();
    T_REQUIRE(b >= 0, "fork");
    if (b == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0)
            dup2(fd, 1);
        int dn = open("/dev/null", O_WRONLY);
        if (dn >= 0)
            dup2(dn, 2);
        execl(g_bench, g_bench, "--url", url, "--image", g_dog_path, "--points", "400,294,1",
              "--concurrency", "2", "--duration", "4", "--timeout", "30", "--json", "--quiet",
              (char *)NULL);
        _exit(127);
    }
    /* Kill it once it has answered some of the load (so the answers come
     * from it and then from a survivor), at most 15 s in. */
    double t0 = now_s();
    while (now_s() - t0 < 15) {
        char *m = get_metrics(vport);
        double n = m ? metric(m, served) : -1;
        free(m);
        if (n >= (base < 0 ? 0 : base) + 2)
            break;
        usleep(50000);
    }
    kill(victim, SIGKILL);
    int st;
    waitpid(b, &st, 0);
    size_t n;
    char *s = (char *)t_read_file(out, &n);
    json_t *j = s ? json_loadb(s, n, 0, NULL) : NULL;
    free(s);
    T_REQUIRE(j, "no JSON from tasam-bench (exit %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    long req = (long)json_integer_value(json_object_get(j, "requests"));
    long ok = (long)json_integer_value(json_object_get(j, "ok"));
    json_t *inst = json_object_get(j, "instances");
    fprintf(stderr, "  %ld requests, %ld ok, %ld resent with the image, on %zu replicas\n", req, ok,
            (long)json_integer_value(json_object_get(j, "resent_with_image")),
            json_object_size(inst));
    T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && req >= 3 && ok == req,
            "tasam-bench exit %d: %ld of %ld requests ok across the kill",
            WIFEXITED(st) ? WEXITSTATUS(st) : -1, ok, req);
    T_CHECK(json_object_size(inst) == 2 && json_object_get(inst, owner),
            "answers came from %zu replicas (want the dead %s, then one survivor)",
            json_object_size(inst), owner);
    json_decref(j);
    /* Once HAProxy has marked it down, the image settles on one survivor. */
    usleep(2500000);
    char first[64], again[64], cache[16];
    T_CHECK(post("/v1/embeddings", path, hdr, first, sizeof first, NULL, 0) == 200 &&
                strcmp(first, owner) != 0,
            "after the kill: %s", first);
    for (int i = 0; i < 3; i++)
        T_CHECK(post("/v1/embeddings", path, hdr, again, sizeof again, cache, sizeof cache) ==
                        200 &&
                    !strcmp(again, first) && !strcmp(cache, "hit"),
                "then %s (%s), want %s", again, cache, first);
}

/* SIGTERM: the script stops every replica and the proxy, and exits 0. */
static void test_sigterm_leaves_nothing(void)
{
    NEED_CLUSTER();
    int pids[4], n = 0;
    for (int k = 1; k <= 3; k++) {
        char rel[32];
        snprintf(rel, sizeof rel, "r%d/pid", k);
        pids[n++] = read_pid(rel);
    }
    pids[n++] = read_pid("haproxy.pid");
    kill(g_cluster, SIGTERM);
    int st = -1;
    double t0 = now_s();
    while (now_s() - t0 < 60 && waitpid(g_cluster, &st, WNOHANG) != g_cluster)
        usleep(50000);
    if (now_s() - t0 >= 60) {
        kill(g_cluster, SIGKILL);
        waitpid(g_cluster, &st, 0);
    }
    g_cluster = 0;
    T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "local-cluster.sh exit %d",
            WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    for (int i = 0; i < n; i++)
        T_CHECK(pids[i] > 0 && kill(pids[i], 0) != 0 && errno == ESRCH,
                "process %d is still there after SIGTERM", pids[i]);
    T_CHECK(http(g_port, "GET", "/healthz", NULL, NULL, NULL, NULL, NULL) == 0,
            "something still answers on the proxy's port");
    /* Every replica that was alive drained and exited 0. */
    for (int k = 1; k <= 3; k++) {
        char p[PATH_MAX + 32];
        snprintf(p, sizeof p, "%s/r%d/tasamd.log", g_root, k);
        daemon_proc d = {0};
        snprintf(d.log, sizeof d.log, "%s", p);
        if (log_contains(&d, "tasamd stopped"))
            T_CHECK(log_contains(&d, "tasamd stopped (exit 0)"), "r%d did not stop cleanly", k);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    if (ts_init(argv[0])) {
        printf("test_cluster: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    char self[PATH_MAX], real[PATH_MAX];
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(g_bench, sizeof g_bench, "%s/../bench/tasam-bench", dirname(self));
    if (realpath(g_bench, real))
        snprintf(g_bench, sizeof g_bench, "%s", real);
    if (g_dog_path) {
        size_t n;
        uint8_t *b = t_read_file(g_dog_path, &n), d[32];
        if (b) {
            eng_sha256(b, n, d);
            eng_sha256_hex(d, g_dog_sha);
        }
        free(b);
    }
    T_RUN(test_cluster_start);
    T_RUN(test_same_image_same_replica);
    T_RUN(test_images_spread);
    T_RUN(test_kill9_one_replica);
    T_RUN(test_sigterm_leaves_nothing);
    if (g_cluster) {
        kill(g_cluster, SIGTERM);
        waitpid(g_cluster, NULL, 0);
    }
    ts_cleanup();
    return t_summary("test_cluster");
}
