/*
 * tests/test_train_learn.c: the proof that `tasam-train run` learns. On the
 * fixture `tiny` SAM (random weights) and a small synthetic set (8 train, 4
 * val images), 10 steps of 4 examples from a zero hypernetwork (plain SAM)
 * raise the validation mIoU by at least 0.15: measured 0.024 -> 0.273
 * (+0.25) on a 2-core machine, so the bound leaves room for another
 * compiler's rounding without admitting a run that learned nothing (a
 * broken gradient or update leaves it at the baseline). What the random
 * decoder learns this fast is to answer nothing where the task has no
 * object, so the no-object tasks go from 0 to at least 0.75 (measured 1).
 * `eval` of the output, with validation's settings, gives the run's final
 * number exactly (one thread, the same decoding batches).
 */
#include "harness.h"
#include "tdata.h"

#include <jansson.h>

#include "engine/error.h"
#include "hypernet/hypernet.h"

static char prog[4096];

static json_t *val_event(const char *log, long step)
{
    FILE *f = fopen(log, "r");
    if (!f)
        return NULL;
    char line[1 << 16];
    json_t *hit = NULL;
    while (!hit && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        const char *e = json_string_value(json_object_get(j, "event"));
        if (e && !strcmp(e, "val") && json_integer_value(json_object_get(j, "step")) == step)
            hit = json_incref(json_object_get(j, "metrics"));
        json_decref(j);
    }
    fclose(f);
    return hit;
}

static double num(json_t *o, const char *k) { return json_number_value(json_object_get(o, k)); }

static double group(json_t *m, const char *g)
{
    return num(json_object_get(json_object_get(m, "groups"), g), "miou");
}

static void test_learns(void)
{
    T_NEED_FIXTURES();
    hn_hypernet_config c;
    hn_hypernet_config_default(&c);
    c.hidden = 64;
    snprintf(c.text_model, sizeof c.text_model, "hashed-384");
    T_REQUIRE(td_synth("set", 4, 8, 4, 160, 120) == 0 &&
                  hn_hypernet_init(td_path("hn0.safetensors"), &c, 0, 0) == 0,
              "%s", eng_last_error());
    char cmd[16384], out[65536];
    char *sam = realpath(t_fixture("sam_tiny.safetensors"), NULL);
    T_REQUIRE(sam, "no fixture model");
    /* in the scratch folder (td_path has four buffers: too few for one command) */
    snprintf(cmd, sizeof cmd,
             "cd %s && %s run --checkpoint %s --data set/train --val set/val --init "
             "hn0.safetensors --out hn1.safetensors --cache cache --steps 10 --batch 4 --lr 3e-3 "
             "--threads 1 --val-prompts 2 --publish-if-better --log run.jsonl --quiet",
             td_dir, prog, sam);
    int rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "exit %d:\n%s", rc, out);
    json_t *b = val_event(td_path("run.jsonl"), 0), *a = val_event(td_path("run.jsonl"), 10);
    T_REQUIRE(a && b, "no validation at steps 0 and 10");
    fprintf(stderr, "  validation mIoU %.4f -> %.4f (no objects %.4f -> %.4f, seen %.4f -> %.4f)\n",
            num(b, "miou"), num(a, "miou"), group(b, "no_objects"), group(a, "no_objects"),
            group(b, "seen"), group(a, "seen"));
    T_CHECK(num(a, "miou") >= num(b, "miou") + 0.15, "mIoU %.4f -> %.4f: learned too little",
            num(b, "miou"), num(a, "miou"));
    T_CHECK(group(a, "no_objects") >= 0.75, "no-object tasks %.4f after training",
            group(a, "no_objects"));
    T_CHECK(access(td_path("hn1.safetensors"), R_OK) == 0, "not published");
    /* eval agrees with the run's own validation */
    snprintf(cmd, sizeof cmd,
             "cd %s && %s eval --checkpoint %s --data set/val --hypernet hn1.safetensors --json "
             "eval.json --cache cache --threads 1 --device cpu --prompts 2 --no-ap --quiet",
             td_dir, prog, sam);
    rc = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(rc == 0, "eval: exit %d:\n%s", rc, out);
    json_t *e = json_load_file(td_path("eval.json"), 0, NULL);
    T_CHECK(e && num(e, "miou") == num(a, "miou") && num(e, "pairs") == num(a, "pairs"),
            "eval says %.9f over %g pairs, the run %.9f over %g", num(e, "miou"), num(e, "pairs"),
            num(a, "miou"), num(a, "pairs"));
    json_decref(e);
    json_decref(a);
    json_decref(b);
    free(sam);
}

int main(int argc, char **argv)
{
    (void)argc;
    td_sibling_abs(argv[0], "tasam-train", prog, sizeof prog);
    if (td_init("learn")) {
        perror("mkdtemp");
        return 1;
    }
    T_RUN(test_learns);
    td_cleanup();
    return t_summary("test_train_learn");
}
