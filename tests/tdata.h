/*
 * tests/tdata.h: helpers shared by the trainer's data and evaluation tests
 * (tests/test_train_data.c, tests/test_cocoeval.c, tests/test_train_grad.c):
 * a scratch folder, files, sibling programs, and small synthetic datasets
 * (commands run through harness.h's t_run_cmd).
 */
#ifndef TASAM_TESTS_TDATA_H
#define TASAM_TESTS_TDATA_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/synth.h"

/* The scratch folder of this test binary (created by td_init). */
static char td_dir[64];

static inline int td_init(const char *name)
{
    snprintf(td_dir, sizeof td_dir, "/tmp/tasam-%s-XXXXXX", name);
    return mkdtemp(td_dir) ? 0 : -1;
}

static inline void td_cleanup(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", td_dir);
    if (td_dir[0] && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", td_dir);
}

/* The path of a program built beside this test binary (build/tests/x ->
 * build/NAME), from argv[0]. */
static inline void td_sibling(const char *argv0, const char *name, char *buf, size_t cap)
{
    const char *slash = strrchr(argv0, '/');
    snprintf(buf, cap, "%.*s/../%s", slash ? (int)(slash - argv0) : 1, slash ? argv0 : ".", name);
}

/* td_dir/name into a static buffer (one of four, for nested calls). */
static inline const char *td_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", td_dir, name);
    return buf[k];
}

static inline int td_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* A small synthetic dataset in td_dir/name. */
static inline int td_synth(const char *name, uint64_t seed, int n_train, int n_val, int w, int h)
{
    tr_synth_config c;
    tr_synth_config_default(&c);
    c.seed = seed;
    c.train_images = n_train;
    c.val_images = n_val;
    c.width = w;
    c.height = h;
    return tr_synth_write(&c, td_path(name), 1, NULL, NULL);
}

#endif
