/*
 * train/progress.c: JSON-lines events and the SVG curve (progress.h).
 */
#include "train/progress.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/error.h"
#include "train/io.h"

struct tr_progress {
    int fd;    /* -1 when none or dropped */
    FILE *log; /* NULL when none or dropped */
    char *log_path;
};

int tr_progress_open(tr_progress **out, int fd, const char *log_path, int append)
{
    *out = NULL;
    tr_progress *p = calloc(1, sizeof *p);
    if (!p)
        return eng_error(ENG_ENOMEM, "out of memory");
    p->fd = -1;
    if (fd >= 0) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || (fl & O_ACCMODE) == O_RDONLY) {
            free(p);
            return eng_error(ENG_EINVAL, "--progress-fd %d: not a descriptor open for writing", fd);
        }
        p->fd = fd;
    }
    if (log_path) {
        if (tr_mkdirs_parent(log_path)) {
            free(p);
            return eng_error(ENG_EIO, "%s: cannot create its folder", log_path);
        }
        p->log = fopen(log_path, append ? "a" : "w");
        if (!p->log || !(p->log_path = strdup(log_path))) {
            int e = errno;
            if (p->log)
                fclose(p->log);
            free(p);
            return eng_error(ENG_EIO, "%s: cannot open the log: %s", log_path, strerror(e));
        }
    }
    *out = p;
    return 0;
}

void tr_progress_close(tr_progress *p)
{
    if (!p)
        return;
    if (p->log)
        fclose(p->log);
    free(p->log_path);
    free(p);
}

static int progress__write_fd(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

void tr_progress_emit(tr_progress *p, json_t *ev)
{
    if (!ev)
        return;
    char *s = p ? json_dumps(ev, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(ev);
    if (!s)
        return;
    size_t n = strlen(s);
    s[n] = '\n'; /* json_dumps' NUL becomes the newline; the string is written by length */
    if (p->fd >= 0 && progress__write_fd(p->fd, s, n + 1)) {
        fprintf(stderr, "tasam-train: progress descriptor %d: %s; no more events there\n", p->fd,
                strerror(errno));
        p->fd = -1;
    }
    if (p->log && (fwrite(s, 1, n + 1, p->log) != n + 1 || fflush(p->log))) {
        fprintf(stderr, "tasam-train: %s: %s; logging stopped\n", p->log_path, strerror(errno));
        fclose(p->log);
        p->log = NULL;
    }
    free(s);
}

/* ---- the curve ---- */

typedef struct curve_val {
    long step;
    double miou, miou_ho, ap;
} curve_val;

struct tr_curve {
    long *loss_step;
    double *loss;
    int n_loss, cap_loss;
    curve_val *val;
    int n_val, cap_val;
};

int tr_curve_create(tr_curve **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : eng_error(ENG_ENOMEM, "out of memory");
}

void tr_curve_destroy(tr_curve *c)
{
    if (!c)
        return;
    free(c->loss_step);
    free(c->loss);
    free(c->val);
    free(c);
}

int tr_curve_add_loss(tr_curve *c, long step, double loss)
{
    if (!isfinite(loss))
        return 0;
    if (c->n_loss == c->cap_loss) {
        int cap = c->cap_loss ? 2 * c->cap_loss : 256;
        long *s = realloc(c->loss_step, (size_t)cap * sizeof *s);
        if (s)
            c->loss_step = s;
        double *l = s ? realloc(c->loss, (size_t)cap * sizeof *l) : NULL;
        if (!l)
            return eng_error(ENG_ENOMEM, "out of memory for the curve");
        c->loss = l;
        c->cap_loss = cap;
    }
    c->loss_step[c->n_loss] = step;
    c->loss[c->n_loss++] = loss;
    return 0;
}

int tr_curve_add_val(tr_curve *c, long step, double miou, double miou_ho, double ap)
{
    if (c->n_val == c->cap_val) {
        int cap = c->cap_val ? 2 * c->cap_val : 32;
        curve_val *v = realloc(c->val, (size_t)cap * sizeof *v);
        if (!v)
            return eng_error(ENG_ENOMEM, "out of memory for the curve");
        c->val = v;
        c->cap_val = cap;
    }
    c->val[c->n_val++] = (curve_val){step, miou, miou_ho, ap};
    return 0;
}

static double curve__num(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

int tr_curve_load_log(tr_curve *c, const char *log_path, long upto)
{
    FILE *f = fopen(log_path, "r");
    if (!f)
        return 0; /* no log yet: nothing to rebuild */
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    while (!rc && getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        const char *ev = json_string_value(json_object_get(j, "event"));
        json_t *st = json_object_get(j, "step");
        long step = json_is_integer(st) ? (long)json_integer_value(st) : -1;
        if (ev && step >= 0 && step <= upto) {
            if (!strcmp(ev, "step")) {
                rc = tr_curve_add_loss(c, step, curve__num(j, "loss"));
            } else if (!strcmp(ev, "val")) {
                json_t *m = json_object_get(j, "metrics");
                json_t *g = json_object_get(json_object_get(m, "groups"), "heldout_phrasing");
                rc = tr_curve_add_val(c, step, curve__num(m, "miou"), curve__num(g, "miou"),
                                      curve__num(m, "ap"));
            }
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    return rc;
}

int tr_curve_path_for_log(const char *log_path, char *buf, size_t cap)
{
    size_t n = strlen(log_path);
    const char *ext = ".jsonl";
    size_t e = strlen(ext);
    int w = n > e && !strcmp(log_path + n - e, ext)
                ? snprintf(buf, cap, "%.*s.svg", (int)(n - e), log_path)
                : snprintf(buf, cap, "%s.svg", log_path);
    if (w < 0 || (size_t)w >= cap)
        return eng_error(ENG_ELIMIT, "%s: path too long", log_path);
    return 0;
}

/* A growing text buffer. */
typedef struct curve_sb {
    char *b;
    size_t n, cap;
    int oom;
} curve_sb;

static void curve__printf(curve_sb *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void curve__printf(curve_sb *s, const char *fmt, ...)
{
    if (s->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(s->b + s->n, s->cap - s->n, fmt, ap);
        va_end(ap);
        if (w < 0) {
            s->oom = 1;
            return;
        }
        if ((size_t)w < s->cap - s->n) {
            s->n += (size_t)w;
            return;
        }
        size_t cap = s->cap * 2 + (size_t)w + 1024;
        char *b = realloc(s->b, cap);
        if (!b) {
            s->oom = 1;
            return;
        }
        s->b = b;
        s->cap = cap;
    }
}

/* Plot geometry: the plot area inside the SVG. */
#define CW  880
#define CH  450
#define PX0 70
#define PX1 800
#define PY0 40
#define PY1 380

int tr_curve_write_svg(const tr_curve *c, const char *path, const char *title)
{
    curve_sb s = {0};
    if (!(s.b = malloc(s.cap = 8192)))
        return eng_error(ENG_ENOMEM, "out of memory for the curve");
    s.b[0] = '\0';
    long smax = 1;
    for (int i = 0; i < c->n_loss; i++)
        smax = c->loss_step[i] > smax ? c->loss_step[i] : smax;
    for (int i = 0; i < c->n_val; i++)
        smax = c->val[i].step > smax ? c->val[i].step : smax;
    /* the loss, smoothed (an exponential moving average over about 1/0.1
     * steps, as training dashboards show it), on a log scale */
    double *sm = malloc(((size_t)c->n_loss + 1) * sizeof *sm), lo = INFINITY, hi = -INFINITY;
    if (!sm) {
        free(s.b);
        return eng_error(ENG_ENOMEM, "out of memory for the curve");
    }
    for (int i = 0; i < c->n_loss; i++) {
        sm[i] = i ? 0.9 * sm[i - 1] + 0.1 * c->loss[i] : c->loss[i];
        double v = fmax(sm[i], 1e-6);
        lo = fmin(lo, v);
        hi = fmax(hi, v);
    }
    if (!(lo < hi)) {
        lo = isfinite(lo) ? lo / 2 : 0.1;
        hi = isfinite(hi) ? hi * 2 : 10;
    }
    const double llo = floor(log10(lo) * 4) / 4, lhi = ceil(log10(hi) * 4) / 4;
#define X(st) (PX0 + (PX1 - PX0) * (double)(st) / (double)smax)
#define YL(v) (PY1 - (PY1 - PY0) * (log10(fmax(v, 1e-6)) - llo) / (lhi - llo))
#define YR(v) (PY1 - (PY1 - PY0) * (v))
    curve__printf(&s,
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                  "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n"
                  "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                  CW, CH, CW, CH);
    curve__printf(&s, "<text x=\"%d\" y=\"22\" font-size=\"14\">", PX0);
    for (const char *t = title ? title : ""; *t; t++) {
        if (*t == '<')
            curve__printf(&s, "&lt;");
        else if (*t == '&')
            curve__printf(&s, "&amp;");
        else if (*t == '>')
            curve__printf(&s, "&gt;");
        else
            curve__printf(&s, "%c", *t);
    }
    curve__printf(&s, "</text>\n");
    /* axes and grid: right axis 0..1 in tenths, left axis the loss */
    for (int k = 0; k <= 10; k += 2) {
        double y = YR(k / 10.0);
        curve__printf(&s,
                      "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                      "<text x=\"%d\" y=\"%.1f\" fill=\"#1f5fbf\">%.1f</text>\n",
                      PX0, y, PX1, y, PX1 + 6, y + 4, k / 10.0);
    }
    for (int k = 0; k <= 4; k++) {
        double lv = llo + (lhi - llo) * k / 4, y = PY1 - (PY1 - PY0) * k / 4.0;
        curve__printf(
            &s, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"#c0392b\">%.3g</text>\n",
            PX0 - 6, y + 4, pow(10, lv));
    }
    for (int k = 0; k <= 5; k++) {
        long st = smax * k / 5;
        curve__printf(&s, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%ld</text>\n", X(st),
                      PY1 + 18, st);
    }
    curve__printf(&s,
                  "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
                  "stroke=\"#444\"/>\n"
                  "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>\n"
                  "<text x=\"14\" y=\"%d\" fill=\"#c0392b\" transform=\"rotate(-90 14 %d)\" "
                  "text-anchor=\"middle\">training loss (smoothed, log)</text>\n"
                  "<text x=\"%d\" y=\"%d\" fill=\"#1f5fbf\" transform=\"rotate(90 %d %d)\" "
                  "text-anchor=\"middle\">validation mIoU / AP</text>\n",
                  PX0, PY0, PX1 - PX0, PY1 - PY0, (PX0 + PX1) / 2, PY1 + 36, (PY0 + PY1) / 2,
                  (PY0 + PY1) / 2, CW - 20, (PY0 + PY1) / 2, CW - 20, (PY0 + PY1) / 2);
    if (c->n_loss) {
        curve__printf(&s,
                      "<polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\" points=\"");
        for (int i = 0; i < c->n_loss; i++)
            curve__printf(&s, "%.1f,%.1f ", X(c->loss_step[i]), YL(sm[i]));
        curve__printf(&s, "\"/>\n");
    }
    /* validation series: mIoU, mIoU of held-out phrasings, AP */
    static const char *const colour[3] = {"#1f5fbf", "#1f5fbf", "#2e8b57"};
    static const char *const dash[3] = {"", " stroke-dasharray=\"5,4\"", ""};
    static const char *const label[3] = {"val mIoU", "val mIoU, held-out phrasings", "val AP"};
    static const int lx[3] = {150, 290, 530}; /* legend entries' offsets */
    for (int sidx = 0; sidx < 3; sidx++) {
        int any = 0;
        for (int i = 0; i < c->n_val; i++) {
            double v = sidx == 0 ? c->val[i].miou : sidx == 1 ? c->val[i].miou_ho : c->val[i].ap;
            if (!isfinite(v) || v < 0)
                continue;
            if (!any++)
                curve__printf(
                    &s, "<polyline fill=\"none\" stroke=\"%s\"%s stroke-width=\"2\" points=\"",
                    colour[sidx], dash[sidx]);
            curve__printf(&s, "%.1f,%.1f ", X(c->val[i].step), YR(fmin(v, 1)));
        }
        if (any)
            curve__printf(&s, "\"/>\n");
        for (int i = 0; i < c->n_val; i++) {
            double v = sidx == 0 ? c->val[i].miou : sidx == 1 ? c->val[i].miou_ho : c->val[i].ap;
            if (isfinite(v) && v >= 0)
                curve__printf(&s, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                              X(c->val[i].step), YR(fmin(v, 1)), colour[sidx]);
        }
        curve__printf(&s,
                      "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\"%s "
                      "stroke-width=\"2\"/><text x=\"%d\" y=\"%d\">%s</text>\n",
                      PX0 + 10 + lx[sidx], PY1 + 52, PX0 + 34 + lx[sidx], PY1 + 52, colour[sidx],
                      dash[sidx], PX0 + 40 + lx[sidx], PY1 + 56, label[sidx]);
    }
    curve__printf(&s,
                  "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#c0392b\" "
                  "stroke-width=\"2\"/><text x=\"%d\" y=\"%d\">training loss</text>\n</svg>\n",
                  PX0 + 10, PY1 + 52, PX0 + 34, PY1 + 52, PX0 + 40, PY1 + 56);
#undef X
#undef YL
#undef YR
    free(sm);
    int rc = s.oom ? eng_error(ENG_ENOMEM, "out of memory for the curve")
                   : tr_write_file_atomic(path, s.b, s.n);
    free(s.b);
    return rc;
}
