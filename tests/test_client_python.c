/*
 * tests/test_client_python.c: the Python client (clients/python) against the
 * real daemon. A virtual environment (build/venv-client, tests/venv.sh, with
 * NumPy from PyPI) gets the client with `pip install clients/python`, as the
 * README says, and tests/python/test_client.py runs in it against tasamd on
 * the fixture model with a random hypernetwork and an admin token; each of
 * its tests is reported here. Where the environment cannot be made (no
 * python3 venv module, no network), the tests skip and say why.
 */
#include "tests/pyrun.h"
#include "tests/tserver.h"

#define ADMIN_TOKEN "client-test-token"

/* The tests test_client.py must report (it may report more). */
static const char *const client_steps[] = {"Codec.test_rle_roundtrip", "Wire.test_training_calls",
                                           "Live.test_installed",      "Live.test_segment_goldens",
                                           "Live.test_rle_equals_png", "Live.test_image_sent_once",
                                           "Live.test_everything",     "Live.test_task",
                                           "Live.test_errors",         NULL};

static void run_client_tests(void)
{
    const char *venv = "build/venv-client";
    char cmd[4 * PATH_MAX], logp[PATH_MAX], why[512];
    daemon_proc d;
    if (pyrun_venv("client_", client_steps, venv, "import numpy", "numpy") != 0)
        return;
    /* what the README tells a user to run; a fresh copy each time */
    tmp_name(logp, sizeof logp, ".pip.log");
    snprintf(cmd, sizeof cmd,
             "timeout 300 '%s/bin/python3' -m pip install -q --disable-pip-version-check "
             "--force-reinstall --no-deps clients/python >'%s' 2>&1",
             venv, logp);
    if (system(cmd) != 0) {
        size_t n;
        char *s = (char *)t_read_file(logp, &n);
        snprintf(why, sizeof why, "pip install clients/python failed: %.400s", s ? s : "");
        free(s);
        t_report("client_pip_install", 1, why);
        return;
    }
    t_report("client_pip_install", 0, NULL);

    /* a task alone is everything mode: a 3x3 grid keeping every mask stays
     * quick on the CPU */
    static const char *const args[] = {"--admin-token", ADMIN_TOKEN, "--everything-defaults",
                                       "{\"points_per_side\": 3, \"pred_iou_thresh\": 0, "
                                       "\"stability_score_thresh\": 0, \"box_nms_thresh\": 1}",
                                       NULL};
    if (pyrun_start_daemon(&d, "client_", 3, args) != 0)
        return;
    tmp_name(logp, sizeof logp, ".client.log");
    snprintf(cmd, sizeof cmd,
             "timeout 900 '%s/bin/python3' tests/python/test_client.py --url http://127.0.0.1:%d "
             "--admin-token %s --fixtures '%s' 2>'%s'",
             venv, d.port, ADMIN_TOKEN, t_fixtures(), logp);
    pyrun_against(&d, cmd, logp, "client_", client_steps);
}

int main(int argc, char **argv)
{
    (void)argc;
    if (ts_init(argv[0]) != 0) {
        printf("test_client_python: 0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    run_client_tests();
    ts_cleanup();
    return t_summary("test_client_python");
}
