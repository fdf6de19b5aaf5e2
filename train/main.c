/*
 * train/main.c: `tasam-train COMMAND [options]`; one file per command
 * (train/cmd_<name>.c), listed in tr__commands below.
 */
#include <stdio.h>
#include <string.h>

#include "train/train.h"

/* Each command file defines its tr_cmd_<name>; add it here. */
static const tr_command tr__commands[] = {
    {"synth", "write the procedural synthetic dataset (COCO instances + PNG images)", tr_cmd_synth},
    {"check-data", "load a COCO dataset as training would, decode its images, describe it",
     tr_cmd_check_data},
    {"coco-eval", "COCO evaluation (segm or bbox) of a results file, as pycocotools computes it",
     tr_cmd_coco_eval},
    {"grad", "recompute a training golden: loss, logits and LoRA gradients", tr_cmd_grad},
    {NULL, NULL, NULL},
};

const tr_command *tr_commands(int *n)
{
    int k = 0;
    while (tr__commands[k].name)
        k++;
    *n = k;
    return tr__commands;
}

static void usage(FILE *f)
{
    int n;
    const tr_command *c = tr_commands(&n);
    fprintf(f, "usage: tasam-train COMMAND [options]\n"
               "\n"
               "Train the hypernetwork that turns a task in words into a LoRA adapter for\n"
               "SAM's mask decoder (SAM itself stays frozen).\n"
               "\n"
               "commands:\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "  %-10s  %s\n", c[i].name, c[i].summary);
    fprintf(f, "\n`tasam-train COMMAND --help` describes each command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    int n;
    const tr_command *c = tr_commands(&n);
    for (int i = 0; i < n; i++)
        if (!strcmp(argv[1], c[i].name))
            return c[i].run(argc - 2, argv + 2);
    fprintf(stderr, "tasam-train: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
