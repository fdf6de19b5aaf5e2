/*
 * train/progress.h: where `tasam-train run` reports: JSON events, one object
 * a line, to a file descriptor (--progress-fd, the daemon's pipe) and to a
 * log file (--log), and the loss / metric curve drawn as an SVG beside the
 * log. The events themselves are listed in train/run.h.
 */
#ifndef TASAM_TRAIN_PROGRESS_H
#define TASAM_TRAIN_PROGRESS_H

#include <jansson.h>
#include <stddef.h>

typedef struct tr_progress tr_progress;

/* Events go to fd (-1: none; it must be open for writing) and to the file
 * log_path (NULL: none; `append` keeps what it holds, e.g. on --resume).
 * Errors name the descriptor or the file. */
int tr_progress_open(tr_progress **out, int fd, const char *log_path, int append);
void tr_progress_close(tr_progress *p);

/* Write one event (stolen: freed here) as a line to each sink. A sink that
 * fails (a closed pipe, a full disk) is dropped with one warning on stderr:
 * reporting never stops a run. */
void tr_progress_emit(tr_progress *p, json_t *ev);

/* ---- the curve ---- */

typedef struct tr_curve tr_curve;

int tr_curve_create(tr_curve **out);
void tr_curve_destroy(tr_curve *c);

/* A training step's loss, and a validation's metrics (NAN: not measured). */
int tr_curve_add_loss(tr_curve *c, long step, double loss);
int tr_curve_add_val(tr_curve *c, long step, double miou, double miou_heldout, double ap);

/* Rebuild the curve from a JSON-lines log written by tr_progress (its
 * "step" and "val" events up to step `upto`), e.g. when a run resumes.
 * Lines that are not such events are skipped. */
int tr_curve_load_log(tr_curve *c, const char *log_path, long upto);

/* Draw the curve (loss on the left axis, log scale, smoothed; validation
 * mIoU and AP on the right axis, 0..1) as an SVG file, written atomically. */
int tr_curve_write_svg(const tr_curve *c, const char *path, const char *title);

/* The curve's path beside a log: LOG.jsonl -> LOG.svg (any other name gets
 * ".svg" added). 0 or ENG_ELIMIT. */
int tr_curve_path_for_log(const char *log_path, char *buf, size_t cap);

#endif
