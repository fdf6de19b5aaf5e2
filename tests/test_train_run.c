/*
 * tests/test_train_run.c: `tasam-train run` and `eval` as a supervisor and
 * a user run them, on the fixture `tiny` model and a small synthetic set:
 * - the contract (train/run.h): the events on --progress-fd in order and
 *   with their fields, the same lines in --log, the curve beside it, the
 *   output's version (input + 1), content id and training metadata, the
 *   training state at each checkpoint, nothing temporary left behind;
 * - SIGTERM after a checkpoint: exit 3, "cancelled" last, nothing at --out;
 *   then --resume from that checkpoint gives exactly the parameters of an
 *   uninterrupted run (one thread: deterministic);
 * - a second run finds every embedding in the cache (no "embed" event);
 * - bad options, data, checkpoints, hypernetworks and text models: exit
 *   status and a message naming the culprit, and "error" last on the fd;
 * - `eval` writes its JSON with every group and per-task entries, and AP
 *   of task-only everything mode where asked (undefined for no-object tasks,
 *   whose masks per image it counts instead).
 */
#include "harness.h"
#include "tdata.h"

#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <unistd.h>

#include "engine/ckpt.h"
#include "engine/error.h"
#include "hypernet/hypernet.h"

static char prog[4096], sam[4096];
static char base[16384]; /* the options every run here shares */
static int have_data;

static void setup(void)
{
    if (!t_fixtures())
        return;
    hn_hypernet_config c;
    hn_hypernet_config_default(&c);
    c.text_dim = 64;
    c.hidden = 32;
    c.rank = 2;
    c.alpha = 4;
    snprintf(c.text_model, sizeof c.text_model, "hashed-64");
    if (td_synth("set", 11, 6, 3, 160, 120) ||
        hn_hypernet_init(td_path("hn0.safetensors"), &c, 1, 0)) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        return;
    }
    /* absolute paths: some runs start in the scratch folder */
    char *ck = realpath(t_fixture("sam_tiny.safetensors"), NULL);
    if (!ck)
        return;
    snprintf(sam, sizeof sam, "%s", ck);
    free(ck);
    snprintf(base, sizeof base,
             "%s run --checkpoint %s --data %s --init %s --cache %s --threads 1 --batch 2 "
             "--seed 5 --quiet",
             prog, sam, td_path("set/train"), td_path("hn0.safetensors"), td_path("cache"));
    have_data = 1;
}

#define NEED_SETUP()                                                                               \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        T_REQUIRE(have_data, "setup failed");                                                      \
    } while (0)

/* The JSON lines of a file, as an array (NULL when a line is not JSON). */
static json_t *read_lines(const char *path)
{
    size_t len = 0;
    char *b = (char *)t_read_file(path, &len);
    if (!b)
        return NULL;
    json_t *a = json_array();
    char *s = b, *end = b + len;
    while (s < end) {
        char *nl = memchr(s, '\n', (size_t)(end - s));
        if (!nl)
            break;
        json_t *j = json_loadb(s, (size_t)(nl - s), 0, NULL);
        if (!j) {
            json_decref(a);
            a = NULL;
            break;
        }
        json_array_append_new(a, j);
        s = nl + 1;
    }
    free(b);
    return a;
}

static const char *ev_name(json_t *e) { return json_string_value(json_object_get(e, "event")); }

static double ev_num(json_t *e, const char *k) { return json_number_value(json_object_get(e, k)); }

static void test_contract(void)
{
    NEED_SETUP();
    char cmd[40000], out[65536];
    snprintf(cmd, sizeof cmd,
             "%s --out %s --val %s --steps 4 --val-every 2 --val-images 2 --val-prompts 1 "
             "--checkpoint-every 2 --refine 1 --log %s --progress-fd 3 3>%s",
             base, td_path("hn1.safetensors"), td_path("set/val"), td_path("run.jsonl"),
             td_path("events.jsonl"));
    int rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "exit %d:\n%s", rc, out);
    json_t *ev = read_lines(td_path("events.jsonl")), *log = read_lines(td_path("run.jsonl"));
    T_REQUIRE(ev && json_array_size(ev) > 0, "no events on the descriptor");
    T_CHECK(log && json_equal(ev, log), "the log differs from the descriptor's lines");
    size_t n = json_array_size(ev);
    json_t *start = json_array_get(ev, 0), *done = json_array_get(ev, n - 1);
    T_CHECK(
        !strcmp(ev_name(start), "start") && ev_num(start, "steps") == 4 &&
            ev_num(start, "batch") == 2 && ev_num(start, "train_images") == 6 &&
            ev_num(start, "val_images") == 3 &&
            !strcmp(json_string_value(json_object_get(json_object_get(start, "init"), "version")),
                    "0"),
        "start event: %s", json_dumps(start, 0));
    int steps = 0, vals = 0, cks = 0, embeds = 0, prompts = 0;
    for (size_t i = 1; i + 1 < n; i++) {
        json_t *e = json_array_get(ev, i);
        const char *nm = ev_name(e);
        if (!strcmp(nm, "step")) {
            steps++;
            prompts += (int)ev_num(e, "prompts");
            T_CHECK(ev_num(e, "step") == steps && ev_num(e, "steps") == 4 &&
                        ev_num(e, "loss") > 0 && ev_num(e, "focal") >= 0 &&
                        ev_num(e, "dice") >= 0 && ev_num(e, "iou_mse") >= 0 &&
                        ev_num(e, "lr") > 0 && ev_num(e, "samples_per_s") > 0 &&
                        ev_num(e, "eta_s") >= 0,
                    "step event %d: %s", steps, json_dumps(e, 0));
            /* loss = 20 focal + dice + iou, summed over the two rounds (no L2) */
            double parts = 20 * ev_num(e, "focal") + ev_num(e, "dice") + ev_num(e, "iou_mse");
            T_CHECK(fabs(parts - ev_num(e, "loss")) < 1e-6 * ev_num(e, "loss") + 1e-9,
                    "loss %.9g, parts %.9g", ev_num(e, "loss"), parts);
        } else if (!strcmp(nm, "val")) {
            vals++;
            json_t *m = json_object_get(e, "metrics"), *g = json_object_get(m, "groups");
            T_CHECK(
                ev_num(e, "step") == 2 * vals && ev_num(m, "miou") >= 0 && ev_num(m, "miou") <= 1 &&
                    json_object_get(g, "seen") && json_object_get(g, "heldout_phrasing") &&
                    json_object_get(g, "heldout_combination") && json_object_get(g, "no_objects"),
                "val event: %s", json_dumps(e, 0));
        } else if (!strcmp(nm, "checkpoint")) {
            cks++;
            const char *p = json_string_value(json_object_get(e, "path"));
            T_CHECK(ev_num(e, "step") == 2 * cks && p && access(p, R_OK) == 0,
                    "checkpoint event: %s", json_dumps(e, 0));
        } else if (!strcmp(nm, "embed")) {
            embeds++;
        } else {
            T_CHECK(0, "unexpected event %s", nm);
        }
    }
    T_CHECK(steps == 4 && vals == 2 && cks == 2 && embeds == 9,
            "%d steps, %d validations, %d checkpoints, %d embedded", steps, vals, cks, embeds);
    /* a refinement round per example, unless its first answer was exact */
    T_CHECK(prompts > 4 * 2 && prompts <= 4 * 2 * 2, "%d prompts in 4 steps of 2 examples",
            prompts);
    T_CHECK(
        !strcmp(ev_name(done), "done") && json_is_true(json_object_get(done, "published")) &&
            !strcmp(json_string_value(json_object_get(done, "version")), "1") &&
            !strcmp(json_string_value(json_object_get(done, "out")), td_path("hn1.safetensors")),
        "done event: %s", json_dumps(done, 0));
    /* the file: version 1, the id the event names, the training metadata */
    hn_params *p = NULL;
    char ver[HN_NAME_MAX], id[HN_ID_LEN + 1], id0[HN_ID_LEN + 1];
    T_REQUIRE(hn_params_read(&p, td_path("hn1.safetensors"), ver) == 0, "%s", eng_last_error());
    hn_params_id(p, id);
    T_CHECK(!strcmp(ver, "1") && !strcmp(id, json_string_value(json_object_get(done, "id"))),
            "version %s, id %s", ver, id);
    hn_params_destroy(p);
    T_REQUIRE(hn_params_read(&p, td_path("hn0.safetensors"), NULL) == 0, "%s", eng_last_error());
    hn_params_id(p, id0);
    hn_params_destroy(p);
    T_CHECK(strcmp(id, id0), "training changed nothing");
    eng_ckpt *ck = NULL;
    T_REQUIRE(eng_ckpt_open(&ck, td_path("hn1.safetensors")) == 0, "%s", eng_last_error());
    json_t *tr =
        json_loads(eng_ckpt_meta(ck, "training") ? eng_ckpt_meta(ck, "training") : "", 0, NULL);
    T_CHECK(tr && ev_num(tr, "steps") == 4 && ev_num(tr, "batch") == 2 &&
                ev_num(tr, "refine") == 1 && ev_num(tr, "seed") == 5 &&
                !strcmp(json_string_value(json_object_get(tr, "parent_id")), id0) &&
                json_object_get(tr, "val") && eng_ckpt_meta(ck, "parent_id") &&
                !strcmp(eng_ckpt_meta(ck, "parent_id"), id0),
            "training metadata: %s", eng_ckpt_meta(ck, "training"));
    json_decref(tr);
    eng_ckpt_close(ck);
    /* the curve, and no temporary file anywhere */
    size_t sl = 0;
    char *svg = (char *)t_read_file(td_path("run.svg"), &sl);
    T_CHECK(svg && sl > 100 && !strncmp(svg, "<svg", 4) && strstr(svg, "</svg>") &&
                strstr(svg, "polyline"),
            "no curve at run.svg");
    free(svg);
    snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp", td_dir);
    t_run_cmd(cmd, out, sizeof out);
    T_CHECK(atoi(out) == 0, "temporary files left: %s", out);
    /* the state holds parameters and moments and names its step */
    T_REQUIRE(eng_ckpt_open(&ck, td_path("hn1.safetensors.state")) == 0, "%s", eng_last_error());
    T_CHECK(!strcmp(eng_ckpt_meta(ck, "step"), "4") && eng_ckpt_find(ck, "params") &&
                eng_ckpt_find(ck, "adam.m") && eng_ckpt_find(ck, "adam.v"),
            "state");
    eng_ckpt_close(ck);
    json_decref(ev);
    json_decref(log);
}

/* Start the trainer with `args` and its events on a pipe; the pid, the
 * pipe's read end. */
static pid_t spawn(const char *args, int *rfd)
{
    int p[2];
    if (pipe(p))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (p[1] != 3) {
            dup2(p[1], 3);
            close(p[1]);
        }
        int dn = open("/dev/null", O_WRONLY);
        dup2(dn, 2);
        execl("/bin/sh", "sh", "-c", args, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    *rfd = p[0];
    return pid;
}

/* Read events until one named `name` (at `step`, when >= 0); the last line
 * read is kept in last. 0 when found, -1 at the end of the stream. */
static int wait_event(FILE *f, const char *name, long step, char *last, size_t cap)
{
    while (fgets(last, (int)cap, f)) {
        json_t *j = json_loads(last, 0, NULL);
        int hit = j && !strcmp(ev_name(j) ? ev_name(j) : "", name) &&
                  (step < 0 || ev_num(j, "step") == step);
        json_decref(j);
        if (hit)
            return 0;
    }
    return -1;
}

static void test_cancel_and_resume(void)
{
    NEED_SETUP();
    char cmd[40000], out[65536], line[65536];
    const char *opts = "--steps 4 --checkpoint-every 2";
    /* uninterrupted */
    snprintf(cmd, sizeof cmd, "%s %s --out %s", base, opts, td_path("full.safetensors"));
    int rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "exit %d:\n%s", rc, out);
    T_CHECK(!strstr(out, "embed"), "a second run embedded images again:\n%s", out);
    /* stopped by SIGTERM once the step-2 state is written */
    snprintf(cmd, sizeof cmd, "exec %s %s --out %s --state %s --progress-fd 3", base, opts,
             td_path("cut.safetensors"), td_path("cut.state"));
    int fd;
    pid_t pid = spawn(cmd, &fd);
    T_REQUIRE(pid > 0, "cannot start the trainer");
    FILE *f = fdopen(fd, "r");
    int found = wait_event(f, "checkpoint", 2, line, sizeof line);
    kill(pid, SIGTERM);
    while (fgets(line, sizeof line, f))
        ; /* the last line stays in `line` */
    fclose(f);
    int st = 0;
    waitpid(pid, &st, 0);
    T_REQUIRE(found == 0, "no checkpoint event at step 2");
    T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 3, "status %d after SIGTERM, want exit 3", st);
    json_t *last = json_loads(line, 0, NULL);
    T_CHECK(last && !strcmp(ev_name(last), "error") &&
                !strcmp(json_string_value(json_object_get(last, "message")), "cancelled"),
            "last event: %s", line);
    json_decref(last);
    T_CHECK(access(td_path("cut.safetensors"), F_OK) != 0, "a cancelled run published");
    /* resumed: the same parameters as the uninterrupted run */
    snprintf(cmd, sizeof cmd, "%s %s --out %s --state %s --resume %s --progress-fd 3 3>%s", base,
             opts, td_path("cut.safetensors"), td_path("cut2.state"), td_path("cut.state"),
             td_path("resume.jsonl"));
    rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "resume: exit %d:\n%s", rc, out);
    json_t *ev = read_lines(td_path("resume.jsonl"));
    T_CHECK(ev && ev_num(json_array_get(ev, 0), "step") == 2 &&
                ev_num(json_array_get(ev, 1), "step") == 3,
            "the resumed run did not start at step 2");
    json_decref(ev);
    hn_params *a = NULL, *b = NULL;
    T_REQUIRE(hn_params_read(&a, td_path("full.safetensors"), NULL) == 0 &&
                  hn_params_read(&b, td_path("cut.safetensors"), NULL) == 0,
              "%s", eng_last_error());
    T_CHECK(a->n_floats == b->n_floats && memcmp(a->mem, b->mem, a->n_floats * sizeof(float)) == 0,
            "resumed parameters differ from the uninterrupted run's");
    hn_params_destroy(a);
    hn_params_destroy(b);
    /* resuming with another configuration names the difference */
    snprintf(cmd, sizeof cmd, "%s --steps 4 --lr 0.01 --out %s --resume %s", base,
             td_path("x.safetensors"), td_path("cut.state"));
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "lr=") && strstr(out, "cut.state"), "exit %d:\n%s", rc, out);
}

static void test_errors(void)
{
    NEED_SETUP();
    char cmd[40000], out[65536], text_tiny[4096];
    struct {
        const char *args; /* after `run` and the shared options unless it starts with '!' */
        int status;
        const char *expect;
    } cases[] = {
        {"--steps 2", 2, "--out"},
        {"--out o.safetensors --steps 0", 2, "--steps"},
        {"--out o.safetensors --batch x", 2, "--batch"},
        {"--out o.safetensors --frobnicate", 2, "unknown option"},
        {"--out o.safetensors --publish-if-better", 2, "--val"},
        {"--out o.safetensors --device tpu", 2, "--device"},
        {"--out o.safetensors --val-every -1", 2, "--val-every"},
        {"--out o.safetensors --resume /nonexistent/state", 1, "/nonexistent/state"},
        {"--out o.safetensors --text-model /nonexistent/model", 1, "/nonexistent/model"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(cmd, sizeof cmd, "cd %s && %s %s --progress-fd 3 3>err.jsonl", td_dir, base,
                 cases[i].args);
        int rc = t_run_cmd(cmd, out, sizeof out);
        json_t *ev = read_lines(td_path("err.jsonl"));
        json_t *last = ev ? json_array_get(ev, json_array_size(ev) - 1) : NULL;
        T_CHECK(rc == cases[i].status && strstr(out, cases[i].expect) && last &&
                    !strcmp(ev_name(last), "error") && access(td_path("o.safetensors"), F_OK),
                "case %zu (%s): exit %d, last event %s:\n%s", i, cases[i].args, rc,
                last ? json_dumps(last, 0) : "none", out);
        json_decref(ev);
    }
    /* a hypernetwork whose text model is not at hand, one with a version
     * that is not a number, a SAM checkpoint that is not one */
    hn_hypernet_config c;
    hn_hypernet_config_default(&c);
    c.hidden = 32;
    hn_params *p = NULL;
    T_REQUIRE(hn_params_create(&p, &c) == 0, "%s", eng_last_error());
    hn_params_init(p, 1, 0);
    T_REQUIRE(hn_params_write(p, td_path("minilm.safetensors"), "0", NULL) == 0, "%s",
              eng_last_error());
    hn_params_destroy(p);
    c.text_dim = 64;
    snprintf(c.text_model, sizeof c.text_model, "hashed-64");
    T_REQUIRE(hn_params_create(&p, &c) == 0, "%s", eng_last_error());
    T_REQUIRE(hn_params_write(p, td_path("abc.safetensors"), "abc", NULL) == 0, "%s",
              eng_last_error());
    hn_params_destroy(p);
    snprintf(cmd, sizeof cmd, "cd %s && %s --out o.safetensors --init minilm.safetensors", td_dir,
             base);
    int rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "all-MiniLM-L6-v2") && strstr(out, "fetch-text-model"),
            "a missing text model: exit %d:\n%s", rc, out);
    snprintf(cmd, sizeof cmd,
             "cd %s && %s --out o.safetensors --init minilm.safetensors "
             "--text-model %s",
             td_dir, base, realpath(t_fixture("text_tiny"), text_tiny) ? text_tiny : "?");
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "384") && strstr(out, "64"),
            "a text model of another width: exit %d:\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "cd %s && %s --out o.safetensors --init abc.safetensors", td_dir,
             base);
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "'abc'") && strstr(out, "whole number"),
            "version abc: exit %d:\n%s", rc, out);
    snprintf(cmd, sizeof cmd, "cd %s && %s --out o.safetensors --checkpoint %s", td_dir, base,
             td_path("abc.safetensors"));
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "abc.safetensors"), "not a SAM checkpoint: exit %d:\n%s", rc,
            out);
    /* a dataset with an image missing names the file and the entry */
    snprintf(cmd, sizeof cmd, "cp -r %s %s && rm %s/images/000002.png", td_path("set/train"),
             td_path("broken"), td_path("broken"));
    T_REQUIRE(system(cmd) == 0, "cannot copy the set");
    snprintf(cmd, sizeof cmd, "cd %s && %s --out o.safetensors --data %s", td_dir, base,
             td_path("broken"));
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 1 && strstr(out, "000002.png") && strstr(out, "images[2]"),
            "a missing image: exit %d:\n%s", rc, out);
    T_CHECK(access(td_path("o.safetensors"), F_OK) != 0, "a failed run wrote its output");
}

static void test_eval_cmd(void)
{
    NEED_SETUP();
    char cmd[40000], out[65536];
    snprintf(cmd, sizeof cmd,
             "%s eval --checkpoint %s --data %s --hypernet %s --json %s --cache %s --threads 1 "
             "--device cpu --prompts 1 --images 2 --no-ap --quiet",
             prog, t_fixture("sam_tiny.safetensors"), td_path("set/val"),
             td_path("hn0.safetensors"), td_path("eval.json"), td_path("cache"));
    int rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "exit %d:\n%s", rc, out);
    json_t *j = json_load_file(td_path("eval.json"), 0, NULL);
    json_t *g = json_object_get(j, "groups");
    T_CHECK(j && json_is_number(json_object_get(j, "miou")) &&
                json_is_null(json_object_get(j, "ap")) && json_object_size(g) == 4 &&
                json_array_size(json_object_get(j, "per_task")) > 0 &&
                !strcmp(json_string_value(
                            json_object_get(json_object_get(j, "hypernetwork"), "version")),
                        "0"),
            "eval JSON: %s", j ? json_dumps(j, 0) : "unreadable");
    char want[64];
    snprintf(want, sizeof want, "miou %.6f", ev_num(j, "miou"));
    T_CHECK(strstr(out, want), "printed mIoU differs from the JSON's (%s):\n%s", want, out);
    json_decref(j);
    /* AP: everything mode under each task's adapter, on a 2x2 grid, its filters open (the
     * random model's masks never pass SAM's 0.88 / 0.95) */
    snprintf(cmd, sizeof cmd,
             "%s eval --checkpoint %s --data %s --hypernet %s --json %s --cache %s --threads 1 "
             "--device cpu --prompts 1 --images 1 --points-per-side 2 --ap-categories 1 "
             "--pred-iou-thresh 0 --stability-thresh 0 --quiet",
             prog, t_fixture("sam_tiny.safetensors"), td_path("set/val"),
             td_path("hn0.safetensors"), td_path("eval_ap.json"), td_path("cache"));
    rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "exit %d:\n%s", rc, out);
    j = json_load_file(td_path("eval_ap.json"), 0, NULL);
    g = json_object_get(j, "groups");
    json_t *no = json_object_get(g, "no_objects"), *seen = json_object_get(g, "seen");
    int with_ap = 0;
    for (size_t i = 0; i < json_array_size(json_object_get(j, "per_task")); i++)
        with_ap += json_is_number(
            json_object_get(json_array_get(json_object_get(j, "per_task"), i), "ap"));
    T_CHECK(j && ev_num(j, "ap") >= 0 && ev_num(j, "ap") <= 1 &&
                json_is_null(json_object_get(no, "ap")) && ev_num(no, "dets_per_image") > 0 &&
                ev_num(seen, "dets_per_image") > 0 && with_ap >= 1,
            "AP: %s", j ? json_dumps(j, 0) : "unreadable");
    json_decref(j);
    snprintf(cmd, sizeof cmd, "%s eval --checkpoint %s --data %s --hypernet %s", prog,
             t_fixture("sam_tiny.safetensors"), td_path("set/val"), td_path("hn0.safetensors"));
    rc = t_run_cmd(cmd, out, sizeof out);
    T_CHECK(rc == 2 && strstr(out, "--json"), "without --json: exit %d:\n%s", rc, out);
}

int main(int argc, char **argv)
{
    (void)argc;
    td_sibling_abs(argv[0], "tasam-train", prog, sizeof prog);
    if (td_init("run")) {
        perror("mkdtemp");
        return 1;
    }
    setup();
    T_RUN(test_contract);
    T_RUN(test_cancel_and_resume);
    T_RUN(test_errors);
    T_RUN(test_eval_cmd);
    td_cleanup();
    return t_summary("test_train_run");
}
