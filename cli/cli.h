/*
 * cli/cli.h: the `tasam` command-line tool, one file per command
 * (cli/<command>.c) and the helpers they share (cli/common.c).
 *
 * Every command is `int cli_cmd_<name>(int argc, char **argv)` with argv
 * after the command word; it prints progress and errors on stderr, results
 * on stdout (or in files), and returns the exit status: 0 success, 1 a
 * runtime error, 2 a usage error.
 */
#ifndef TASAM_CLI_CLI_H
#define TASAM_CLI_CLI_H

#include "adapters/adapter.h"
#include "engine/ops.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"

int cli_cmd_segment(int argc, char **argv);
int cli_cmd_embed_text(int argc, char **argv);
int cli_cmd_hypernet(int argc, char **argv);
int cli_cmd_adapter(int argc, char **argv);

/* Monotonic milliseconds. */
double cli_now_ms(void);
/* Parse exactly n comma-separated finite numbers; 0 or -1. */
int cli_parse_numbers(const char *s, double *out, int n);
/* A whole-string integer in [lo, hi]; 0 or -1. */
int cli_parse_int(const char *s, long long lo, long long hi, long long *out);
/* Backends per --device/--precision (eng_sam_open_backends); auto falls back
 * to the CPU with a note. `dec` (may be NULL: not wanted) gets the decoder's
 * own backend where the choice splits them. Returns an exit status. */
int cli_open_backend(const char *device, const char *precision, int threads, eng_backend **be,
                     eng_backend **dec);
/* Load a hypernetwork and the text encoder it was built for (text_dir, or
 * what the hypernetwork names), on `be`, saying what it does. Returns an
 * exit status. */
int cli_load_hypernet_and_text(const char *path, const char *text_dir, eng_backend *be,
                               hn_hypernet **h, hn_text **text);
/* One line per adapter property on stderr; "adapter ID" on stdout. */
void cli_print_adapter(const ad_adapter *ad);

#endif
