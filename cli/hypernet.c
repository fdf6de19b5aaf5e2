/*
 * cli/hypernet.c: `tasam hypernet init|info`: write a fresh hypernetwork, describe one.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/ops.h"
#include "engine/rle.h"
#include "engine/sam.h"
#include "adapters/adapter.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"

/* ---- tasam hypernet ---- */

static void hypernet_usage(FILE *f)
{
    fprintf(f,
            "usage: tasam hypernet init --out FILE [options]\n"
            "       tasam hypernet info FILE\n"
            "\n"
            "init writes a fresh hypernetwork (version \"0\"). Untrained, its adapters are\n"
            "exactly zero (delta W = 0: plain SAM) unless --random.\n"
            "\n"
            "  --out FILE          where to write it (safetensors)\n"
            "  --seed N            random seed (default 0)\n"
            "  --random            random output heads too: adapters change the masks\n"
            "                      (tests, demos)\n"
            "  --rank R            LoRA rank, %d..%d (default %d)\n"
            "  --alpha A           LoRA alpha; the scale is alpha/rank (default 2*rank)\n"
            "  --hidden H          hidden width (default %d)\n"
            "  --text-model M      the text encoder its adapters are made with: a name\n"
            "                      (default all-MiniLM-L6-v2, looked up as models/NAME), a\n"
            "                      model folder (its name and width are read from it), or\n"
            "                      'hashed' for the built-in hashed embedding (no files)\n"
            "  --text-dim D        embedding width (default 384; taken from a folder)\n"
            "  --targets LIST      decoder layers to adapt: all (default), groups attn, mlp,\n"
            "                      hyper, iou, or layer names, comma-separated; '-' removes\n"
            "                      (e.g. all,-mlp)\n",
            HN_MIN_RANK, HN_MAX_RANK, HN_DEFAULT_RANK, HN_DEFAULT_HIDDEN);
}

static int hypernet_info(const char *path)
{
    hn_params *p = NULL;
    char version[HN_NAME_MAX], id[HN_ID_LEN + 1], tg[4096];
    if (hn_params_read(&p, path, version)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        return 1;
    }
    size_t trunk, heads;
    hn_params_count(p, &trunk, &heads);
    hn_params_id(p, id);
    hn_targets_format(p->cfg.present, tg, sizeof tg);
    int n = 0;
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++)
        n += p->cfg.present[t];
    printf("hypernetwork %s\n  id %s\n  version %s\n  text model %s (%d-d)\n  hidden %d, rank "
           "%d, alpha %g\n  parameters: trunk %zu, heads %zu (%.1f MiB f32)\n  targets: %d "
           "(%s)\n",
           path, id, version, p->cfg.text_model, p->cfg.text_dim, p->cfg.hidden, p->cfg.rank,
           (double)p->cfg.alpha, trunk, heads, (trunk + heads) * 4.0 / (1 << 20), n,
           n == ENG_SAM_LORA_TARGETS ? "all" : tg);
    hn_params_destroy(p);
    return 0;
}

int cli_cmd_hypernet(int argc, char **argv)
{
    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        hypernet_usage(argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    if (!strcmp(argv[0], "info")) {
        if (argc == 2 && strcmp(argv[1], "--help"))
            return hypernet_info(argv[1]);
        hypernet_usage(argc == 2 ? stdout : stderr);
        return argc == 2 ? 0 : 2;
    }
    if (strcmp(argv[0], "init")) {
        fprintf(stderr, "tasam hypernet: unknown subcommand '%s' (init or info)\n", argv[0]);
        return 2;
    }
    hn_hypernet_config cfg;
    hn_hypernet_config_default(&cfg);
    const char *out = NULL, *model = NULL, *targets = "all";
    long long seed = 0, v;
    int random = 0, alpha_set = 0, dim_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(o, "--help") || !strcmp(o, "-h")) {
            hypernet_usage(stdout);
            return 0;
        }
        if (!strcmp(o, "--random")) {
            random = 1;
            continue;
        }
        int known = !strcmp(o, "--out") || !strcmp(o, "--seed") || !strcmp(o, "--rank") ||
                    !strcmp(o, "--alpha") || !strcmp(o, "--hidden") || !strcmp(o, "--text-model") ||
                    !strcmp(o, "--text-dim") || !strcmp(o, "--targets");
        if (!known) {
            fprintf(stderr, "tasam hypernet init: unknown option '%s' (see --help)\n", o);
            return 2;
        }
        if (!val) {
            fprintf(stderr, "tasam hypernet init: %s needs a value\n", o);
            return 2;
        }
        i++;
        if (!strcmp(o, "--out")) {
            out = val;
        } else if (!strcmp(o, "--seed")) {
            if (cli_parse_int(val, 0, INT64_MAX, &seed)) {
                fprintf(stderr, "tasam hypernet init: --seed must be a non-negative integer\n");
                return 2;
            }
        } else if (!strcmp(o, "--rank")) {
            if (cli_parse_int(val, HN_MIN_RANK, HN_MAX_RANK, &v)) {
                fprintf(stderr, "tasam hypernet init: --rank must be %d..%d\n", HN_MIN_RANK,
                        HN_MAX_RANK);
                return 2;
            }
            cfg.rank = (int)v;
        } else if (!strcmp(o, "--alpha")) {
            char *end;
            cfg.alpha = strtof(val, &end);
            if (end == val || *end || !(cfg.alpha > 0) || cfg.alpha > 1024) {
                fprintf(stderr, "tasam hypernet init: --alpha must be in (0, 1024]\n");
                return 2;
            }
            alpha_set = 1;
        } else if (!strcmp(o, "--hidden")) {
            if (cli_parse_int(val, 8, 4096, &v)) {
                fprintf(stderr, "tasam hypernet init: --hidden must be 8..4096\n");
                return 2;
            }
            cfg.hidden = (int)v;
        } else if (!strcmp(o, "--text-dim")) {
            if (cli_parse_int(val, 1, 65536, &v)) {
                fprintf(stderr, "tasam hypernet init: --text-dim must be 1..65536\n");
                return 2;
            }
            cfg.text_dim = (int)v;
            dim_set = 1;
        } else if (!strcmp(o, "--text-model")) {
            model = val;
        } else {
            targets = val;
        }
    }
    if (!out) {
        fprintf(stderr, "tasam hypernet init: --out FILE is required (see --help)\n");
        return 2;
    }
    if (!alpha_set)
        cfg.alpha = 2.0f * cfg.rank;
    if (hn_targets_parse(targets, cfg.present)) {
        fprintf(stderr, "tasam hypernet init: --targets: %s\n", eng_last_error());
        return 2;
    }
    struct stat st;
    if (model && stat(model, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* A model folder: its name and width, from the encoder itself. */
        eng_backend *be = NULL;
        hn_text *t = NULL;
        if (eng_backend_cpu_create(&be, 1) || hn_text_load(&t, model, be, 1)) {
            fprintf(stderr, "tasam: %s: %s\n", model, eng_last_error());
            eng_backend_destroy(be);
            return 1;
        }
        if (dim_set && cfg.text_dim != hn_text_dim(t)) {
            fprintf(stderr, "tasam hypernet init: --text-dim %d, but %s is %d-d\n", cfg.text_dim,
                    model, hn_text_dim(t));
            hn_text_destroy(t);
            eng_backend_destroy(be);
            return 2;
        }
        cfg.text_dim = hn_text_dim(t);
        hn_hypernet_text_name(t, cfg.text_model, sizeof cfg.text_model);
        hn_text_destroy(t);
        eng_backend_destroy(be);
    } else if (model && !strcmp(model, "hashed")) {
        snprintf(cfg.text_model, sizeof cfg.text_model, "hashed-%d", cfg.text_dim);
    } else if (model && !strncmp(model, "hashed-", 7)) {
        if (cli_parse_int(model + 7, 16, 65536, &v) || (dim_set && v != cfg.text_dim)) {
            fprintf(stderr,
                    "tasam hypernet init: --text-model %s: expected hashed-D with D "
                    "16..65536 (and equal to --text-dim)\n",
                    model);
            return 2;
        }
        cfg.text_dim = (int)v;
        snprintf(cfg.text_model, sizeof cfg.text_model, "hashed-%d", cfg.text_dim);
    } else if (model) {
        if (strchr(model, '/')) {
            fprintf(stderr, "tasam hypernet init: --text-model %s: no such folder\n", model);
            return 1;
        }
        if (strlen(model) >= sizeof cfg.text_model) {
            fprintf(stderr, "tasam hypernet init: --text-model name too long\n");
            return 2;
        }
        snprintf(cfg.text_model, sizeof cfg.text_model, "%s", model);
    }
    if (hn_hypernet_config_check(&cfg)) {
        fprintf(stderr, "tasam hypernet init: %s\n", eng_last_error());
        return 2;
    }
    if (hn_hypernet_init(out, &cfg, (uint64_t)seed, random)) {
        fprintf(stderr, "tasam: %s\n", eng_last_error());
        return 1;
    }
    fprintf(stderr, "tasam: wrote %s (%s adapters)\n", out,
            random ? "random: non-zero" : "zero: delta W = 0, plain SAM");
    return hypernet_info(out);
}
