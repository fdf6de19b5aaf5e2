/*
 * cli/main.c: `tasam`, the command-line tool.
 *
 *   tasam segment --checkpoint FILE --image IMG [--point X,Y,LABEL]...
 *                 [--box X0,Y0,X1,Y1]... [--mask-input FILE.safetensors]
 *                 [--single-mask] [--dump OUT.safetensors] [--json OUT.json]
 *                 [--png OUT_PREFIX] [--device auto|cpu|cuda] [--precision ...]
 *                 [--hypernet FILE --task TEXT [--text-model DIR] [--merged]]
 *                 [--adapter FILE.safetensors]
 *   tasam embed-text [--text-model DIR] [--dump OUT.safetensors] TEXT...
 *   tasam hypernet init --out FILE [--seed N] [--random] [--rank R] [--alpha A]
 *                 [--text-dim D] [--text-model NAME|DIR|hashed] [--targets LIST]
 *   tasam hypernet info FILE
 *   tasam adapter --hypernet FILE --task TEXT --out FILE [--text-model DIR]
 *   tasam adapter --info FILE
 *
 * Points and one box form one prompt; several boxes form a batch of prompts
 * (the points, if any, join each). Exit status: 0 success, 1 runtime error,
 * 2 usage error. One file per command (cli/<command>.c).
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: tasam COMMAND [options]\n"
               "\n"
               "commands:\n"
               "  segment     segment an image with SAM (points, boxes, masks or no prompt),\n"
               "              optionally adapted to a task in words (--hypernet, --task)\n"
               "  embed-text  embed texts with the task-text encoder\n"
               "  hypernet    init: write a fresh hypernetwork; info: describe one\n"
               "  adapter     generate a task's LoRA adapter and save it\n"
               "\n"
               "`tasam COMMAND --help` describes each command.\n");
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
    if (!strcmp(argv[1], "segment"))
        return cli_cmd_segment(argc - 2, argv + 2);
    if (!strcmp(argv[1], "embed-text"))
        return cli_cmd_embed_text(argc - 2, argv + 2);
    if (!strcmp(argv[1], "hypernet"))
        return cli_cmd_hypernet(argc - 2, argv + 2);
    if (!strcmp(argv[1], "adapter"))
        return cli_cmd_adapter(argc - 2, argv + 2);
    fprintf(stderr, "tasam: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
