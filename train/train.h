/*
 * train/train.h: `tasam-train`, the program that teaches the hypernetwork
 * from data with SAM frozen (the gradient flows from the loss through the
 * LoRA-adapted mask decoder into the hypernetwork), and its commands.
 *
 * Every command is `int tr_cmd_<name>(int argc, char **argv)` with argv after
 * the command word, in its own file (train/cmd_<name>.c); it prints progress
 * and errors on stderr, results on stdout or in files, and returns the exit
 * status: 0 success, 1 a runtime error, 2 a usage error. The pieces the
 * commands are made of (losses, data, prompt sampling, optimiser,
 * evaluation) have their own headers in train/ and live in the library, so
 * the tests link them directly.
 */
#ifndef TASAM_TRAIN_TRAIN_H
#define TASAM_TRAIN_TRAIN_H

/* One command of tasam-train. */
typedef struct tr_command {
    const char *name;                  /* the word after tasam-train */
    const char *summary;               /* one line for the usage text */
    int (*run)(int argc, char **argv); /* argv after the command word */
} tr_command;

/* The commands (train/cmd_<name>.c). */
int tr_cmd_synth(int argc, char **argv);
int tr_cmd_coco_eval(int argc, char **argv);
int tr_cmd_check_data(int argc, char **argv);
int tr_cmd_grad(int argc, char **argv);

/* The commands, in the order `tasam-train --help` lists them (train/main.c);
 * n receives the count. */
const tr_command *tr_commands(int *n);

#endif
