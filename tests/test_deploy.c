/*
 * tests/test_deploy.c: the deployment files, checked by the tools that run
 * them and against each other:
 *   - deploy/haproxy.cfg loads in HAProxy (haproxy -c) with the local and
 *     the Kubernetes server lists;
 *   - every deploy/k8s manifest passes kubernetes-validate --strict (PyPI, installed
 *     by make deps into build/venv-deploy), which also refuses a broken copy;
 *   - the HAProxy ConfigMap is the one rendered from deploy/haproxy.cfg;
 *   - the tasamd.conf of the Kubernetes ConfigMap loads in tasamd (the only
 *     failure left is the model it cannot find here), its limits match the
 *     proxy's, and the image's user is the pods' user;
 *   - deploy/local-cluster.sh refuses bad arguments with status 2.
 * Each check skips, saying why, when its tool is not installed.
 */
#include "tests/tserver.h"

static const char *const KV = "build/venv-deploy/bin/kubernetes-validate";

/* Run a shell command with its output in a temp file; returns the exit
 * status (-1 when it did not exit) and the output (malloc'd) in *out. */
static int run(const char *cmd, char **out)
{
    char log[PATH_MAX], full[8192];
    tmp_name(log, sizeof log, ".out");
    snprintf(full, sizeof full, "%s >'%s' 2>&1", cmd, log);
    int st = system(full);
    size_t n = 0;
    char *s = (char *)t_read_file(log, &n);
    if (out) {
        *out = s ? realloc(s, n + 1) : NULL;
        if (*out)
            (*out)[n] = 0;
        else
            free(s);
    } else {
        free(s);
    }
    unlink(log);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *slurp(const char *path)
{
    size_t n;
    char *s = (char *)t_read_file(path, &n), *b;
    if (!s || !(b = realloc(s, n + 1))) {
        free(s);
        return NULL;
    }
    b[n] = 0;
    return b;
}

static void test_haproxy_config(void)
{
    if (!ts_have("haproxy"))
        T_SKIP("haproxy is not installed (make deps installs it)");
    char servers[PATH_MAX], cmd[3 * PATH_MAX], *out = NULL;
    tmp_name(servers, sizeof servers, ".cfg");
    const char *local = "backend tasamd from tasam\n    server r1 127.0.0.1:9001\n"
                        "    server r2 127.0.0.1:9002\n";
    T_REQUIRE(write_file(servers, local, strlen(local)) == 0, "write %s", servers);
    snprintf(cmd, sizeof cmd, "haproxy -c -f deploy/haproxy.cfg -f '%s'", servers);
    T_CHECK(run(cmd, &out) == 0, "local servers: %s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd,
             "TASAM_BIND=127.0.0.1:1 TASAM_STATS_BIND=127.0.0.1:2 haproxy -c -f deploy/haproxy.cfg "
             "-f '%s'",
             servers);
    T_CHECK(run(cmd, &out) == 0, "with the stats frontend: %s", out ? out : "");
    free(out);
    T_CHECK(run("haproxy -c -f deploy/haproxy.cfg -f deploy/k8s/haproxy-servers.cfg", &out) == 0,
            "Kubernetes servers: %s", out ? out : "");
    free(out);
    /* The check can fail: a backend the frontend does not know. */
    const char *wrong = "backend other from tasam\n    server r1 127.0.0.1:9001\n";
    T_REQUIRE(write_file(servers, wrong, strlen(wrong)) == 0, "write %s", servers);
    snprintf(cmd, sizeof cmd, "haproxy -c -f deploy/haproxy.cfg -f '%s'", servers);
    T_CHECK(run(cmd, NULL) != 0, "haproxy -c accepted a configuration without backend tasamd");
}

static void test_configmap_is_rendered(void)
{
    char *out = NULL;
    T_CHECK(run("deploy/k8s/render-haproxy-config.sh --check", &out) == 0, "%s", out ? out : "");
    free(out);
}

static void test_k8s_manifests(void)
{
    if (access(KV, X_OK) != 0)
        T_SKIP("%s is not installed (make deps installs it from PyPI; it could not be here)", KV);
    char cmd[PATH_MAX * 2], *out = NULL;
    static const char *const versions[] = {"1.29.0", "1.37.0"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s -k %s --strict --quiet deploy/k8s/*.yaml", KV, versions[i]);
        T_CHECK(run(cmd, &out) == 0, "kubernetes %s: %s", versions[i], out ? out : "");
        free(out);
    }
    /* The validator refuses what it should: an unknown field in a copy. */
    char bad[PATH_MAX];
    tmp_name(bad, sizeof bad, ".yaml");
    snprintf(cmd, sizeof cmd, "sed 's/^  replicas: 3/  replicaz: 3/' deploy/k8s/tasamd.yaml >'%s'",
             bad);
    T_REQUIRE(system(cmd) == 0, "sed");
    snprintf(cmd, sizeof cmd, "%s --strict --quiet '%s'", KV, bad);
    T_CHECK(run(cmd, &out) != 0 && out && strstr(out, "replicaz"),
            "kubernetes-validate accepted a Deployment with 'replicaz': %s", out ? out : "");
    free(out);
}

/* The literal block under `key: |` in a manifest (4-space indented), or
 * NULL. */
static char *literal_block(const char *text, const char *key)
{
    char head[128];
    snprintf(head, sizeof head, "\n  %s: |\n", key);
    const char *p = strstr(text, head);
    if (!p)
        return NULL;
    p += strlen(head);
    size_t cap = strlen(p) + 1, o = 0;
    char *out = malloc(cap);
    while (out && *p) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 0 && strncmp(p, "    ", 4) != 0)
            break; /* the block ends at a less indented line */
        if (n >= 4) {
            memcpy(out + o, p + 4, n - 4);
            o += n - 4;
        }
        out[o++] = '\n';
        p += n + (e != NULL);
    }
    if (out)
        out[o] = 0;
    return out;
}

/* Value of `name = value` in a tasamd config text ("" when absent). */
static void conf_value(const char *conf, const char *name, char *v, size_t n)
{
    v[0] = 0;
    for (const char *p = conf; p && *p;) {
        size_t nl = strlen(name);
        if (!strncmp(p, name, nl) && (p[nl] == ' ' || p[nl] == '=')) {
            const char *q = strchr(p, '=');
            if (q) {
                q++;
                while (*q == ' ')
                    q++;
                size_t k = 0;
                while (*q && *q != '\n' && *q != ' ' && *q != '#' && k + 1 < n)
                    v[k++] = *q++;
                v[k] = 0;
            }
            return;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
}

static void test_manifests_agree(void)
{
    char *yaml = slurp("deploy/k8s/tasamd.yaml"), *hap = slurp("deploy/haproxy.cfg"),
         *docker = slurp("Dockerfile");
    T_REQUIRE(yaml && hap && docker, "cannot read the deployment files");
    char *conf = literal_block(yaml, "tasamd.conf");
    T_REQUIRE(conf && strstr(conf, "checkpoint = "), "no tasamd.conf in deploy/k8s/tasamd.yaml");
    /* The limits the proxy mirrors. */
    char v[64];
    conf_value(conf, "max-body-bytes", v, sizeof v);
    T_CHECK(!strcmp(v, "32MiB") && strstr(hap, "req.hdr_val(content-length) gt 33554432") &&
                strstr(hap, "larger than max-body-bytes (33554432)"),
            "max-body-bytes %s against the proxy's 33554432", v);
    conf_value(conf, "queue-depth", v, sizeof v);
    const char *ds = strstr(hap, "\n    default-server "), *dse = ds ? strchr(ds + 1, '\n') : NULL;
    const char *mc = ds ? strstr(ds, " maxconn 64") : NULL;
    T_CHECK(mc && mc < dse && (mc[11] == ' ' || mc[11] == '\n') && !strcmp(v, "64"),
            "queue-depth %s against the proxy's maxconn 64 per replica", v);
    conf_value(conf, "request-timeout-ms", v, sizeof v);
    T_CHECK(atoi(v) == 30000 && strstr(hap, "timeout server 35s"),
            "request-timeout-ms %s against the proxy's timeout server 35s", v);
    /* The image's user is the one the pods run as. */
    T_CHECK(strstr(docker, "\nUSER 10001:10001\n") && strstr(yaml, "runAsUser: 10001\n") &&
                strstr(yaml, "runAsNonRoot: true") && strstr(yaml, "readOnlyRootFilesystem: true"),
            "Dockerfile USER and the Deployment's securityContext differ");
    T_CHECK(strstr(docker, "docker build -t tasam/tasamd:0.1.0 .") &&
                strstr(yaml, "image: tasam/tasamd:0.1.0\n"),
            "the manifests run another image than the Dockerfile builds");
    /* Every file the Dockerfile copies exists. */
    static const char *const copied[] = {"deploy/fetch-checkpoint.sh", "deploy/fetch-text-model.sh",
                                         "deploy/tasamd.conf.example", "LICENSE", "README.md"};
    for (size_t i = 0; i < sizeof copied / sizeof *copied; i++)
        T_CHECK(strstr(docker, copied[i]) && access(copied[i], R_OK) == 0, "%s", copied[i]);
    /* The config loads: with its paths absent here (and the CPU for its
     * cuda), tasamd gets past every option (exit 2 would be a bad option)
     * and fails on the model it cannot find (1). */
    char cf[PATH_MAX], state[PATH_MAX], cmd[4 * PATH_MAX], *out = NULL;
    tmp_name(cf, sizeof cf, ".conf");
    tmp_name(state, sizeof state, ".state");
    T_REQUIRE(write_file(cf, conf, strlen(conf)) == 0, "write %s", cf);
    snprintf(cmd, sizeof cmd,
             "TASAMD_LISTEN=127.0.0.1:0 TASAMD_STATE_DIR='%s' TASAMD_INSTANCE=tasamd-0 "
             "TASAMD_DEVICE=cpu "
             "timeout 60 '%s' --config '%s'",
             state, g_tasamd, cf);
    int st = run(cmd, &out);
    T_CHECK(st == 1 && out && strstr(out, "sam_vit_h_4b8939.pth"),
            "tasamd with the Kubernetes config: exit %d (want 1: the model is not here):\n%s", st,
            out ? out : "");
    free(out);
    free(conf);
    free(yaml);
    free(hap);
    free(docker);
}

static void test_local_cluster_usage(void)
{
    char *out = NULL;
    T_CHECK(run("deploy/local-cluster.sh --help", &out) == 0 && out && strstr(out, "--replicas"),
            "--help: %s", out ? out : "");
    free(out);
    static const char *const bad[] = {
        "",
        "--replicas 0 --port 1 --checkpoint Makefile --state-root /tmp/x",
        "--replicas 65 --port 1 --checkpoint Makefile --state-root /tmp/x",
        "--replicas 2 --port 70000 --checkpoint Makefile --state-root /tmp/x",
        "--replicas 2 --port 1 --checkpoint /nonexistent --state-root /tmp/x",
        "--replicas 2 --port 1 --checkpoint Makefile --state-root /tmp/x --device tpu",
        "--replicas 2 --port 1 --checkpoint Makefile --state-root /tmp/x --bogus",
        "--replicas 2 --port 1 --checkpoint Makefile --state-root /tmp/x --tasamd /nonexistent",
        "--replicas",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "deploy/local-cluster.sh %s", bad[i]);
        int st = run(cmd, &out);
        T_CHECK(st == 2 && out && strstr(out, "local-cluster: "), "`%s`: exit %d: %s", cmd, st,
                out ? out : "");
        free(out);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    if (ts_init(argv[0])) {
        printf("test_deploy: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    T_RUN(test_haproxy_config);
    T_RUN(test_configmap_is_rendered);
    T_RUN(test_k8s_manifests);
    T_RUN(test_manifests_agree);
    T_RUN(test_local_cluster_usage);
    ts_cleanup();
    return t_summary("test_deploy");
}
