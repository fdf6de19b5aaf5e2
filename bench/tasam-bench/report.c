/*
 * bench/tasam-bench/report.c: what a run prints: the text report, one row
 * per sweep step, every figure as JSON, and the SVG plots; and the names
 * of kinds, stages, percentiles and failures they use.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench/tasam-bench/tb.h"

const char *const tb_stage_names[NST] = {"decode",       "queue",       "encode",
                                         "decode_masks", "postprocess", "total"};
const char *const tb_kind_names[NKIND] = {"segment", "everything", "embeddings", "healthz"};
const double tb_pct_p[NPCT] = {50, 90, 99, 99.9};
const char *const tb_pct_json[NPCT] = {"p50_ms", "p90_ms", "p99_ms", "p99_9_ms"};
const char *const tb_pct_text[NPCT] = {"p50", "p90", "p99", "p99.9"};
const double tb_spectrum_p[NSPECTRUM] = {0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99};

const char *tb_err_name(int e) { return e == ERR_INVALID ? "invalid_body" : hc_strerror(-e); }

/* ---- output ------------------------------------------------------------- */

static json_t *jnum(double v)
{
    return isfinite(v) ? json_real(round(v * 1000) / 1000) : json_null();
}

json_t *tb_stats_json(const stats *s, int server_detail)
{
    json_t *j = json_object(), *sc = json_object(), *te = json_object(), *k = json_object();
    if (s->rate > 0)
        json_object_set_new(j, "rate", jnum(s->rate));
    json_object_set_new(j, "connections", json_integer(s->connections));
    json_object_set_new(j, "duration_s", jnum(s->secs));
    json_object_set_new(j, "requests", json_integer(s->n));
    json_object_set_new(j, "ok", json_integer(s->ok));
    json_object_set_new(j, "errors", json_integer(s->errors));
    json_object_set_new(j, "achieved_rate", jnum(s->achieved_rate));
    json_object_set_new(j, "throughput", jnum(s->throughput));
    json_object_set_new(j, "min_ms", jnum(s->lat_min));
    for (int i = 0; i < NPCT; i++)
        json_object_set_new(j, tb_pct_json[i], jnum(s->lat[i]));
    json_object_set_new(j, "max_ms", jnum(s->lat_max));
    json_object_set_new(j, "mean_ms", jnum(s->lat_mean));
    for (int i = 0; i < NPCT; i++) {
        char key[32];
        snprintf(key, sizeof key, "service_%s", tb_pct_json[i]);
        json_object_set_new(j, key, jnum(s->svc[i]));
    }
    if (s->rate > 0) {
        json_object_set_new(j, "late_sends", json_integer(s->late));
        json_object_set_new(j, "send_lag_p99_ms", jnum(s->lag_p99));
        json_object_set_new(j, "send_lag_max_ms", jnum(s->lag_max));
    }
    for (int c = 100; c < 600; c++)
        if (s->status[c]) {
            char key[8];
            snprintf(key, sizeof key, "%d", c);
            json_object_set_new(sc, key, json_integer(s->status[c]));
        }
    json_object_set_new(j, "status", sc);
    for (int e = 1; e < NERR; e++)
        if (e != -HC_EINVAL)
            json_object_set_new(te, tb_err_name(e), json_integer(s->errs[e]));
    json_object_set_new(j, "transport_errors", te);
    json_object_set_new(j, "reconnects", json_integer(s->reconnects));
    for (int i = 0; i < NKIND; i++)
        if (s->kind_n[i])
            json_object_set_new(k, tb_kind_names[i],
                                json_pack("{s:I,s:I,s:o,s:o}", "requests", (json_int_t)s->kind_n[i],
                                          "ok", (json_int_t)s->kind_ok[i], "p50_ms",
                                          jnum(s->kind_p50[i]), "p99_ms", jnum(s->kind_p99[i])));
    json_object_set_new(j, "kinds", k);
    json_object_set_new(j, "cache_hits", json_integer(s->cache_hit));
    json_object_set_new(j, "cache_misses", json_integer(s->cache_miss));
    json_object_set_new(j, "resent_with_image", json_integer(s->resent));
    json_t *in = json_object();
    for (int i = 0; i < s->n_inst; i++)
        json_object_set_new(in, s->inst[i], json_integer(s->inst_n[i]));
    json_object_set_new(j, "instances", in);
    if (server_detail) {
        json_t *sv = json_object();
        for (int i = 0; i < NST; i++)
            json_object_set_new(sv, tb_stage_names[i], jnum(s->stage_p50[i]));
        json_object_set_new(j, "server_p50_ms", sv);
        json_object_set_new(
            j, "overhead_ms",
            json_pack("{s:o,s:o}", "p50", jnum(s->ovh_p50), "p99", jnum(s->ovh_p99)));
        json_object_set_new(
            j, "outside_server_ms",
            json_pack("{s:o,s:o}", "p50", jnum(s->outside_p50), "p99", jnum(s->outside_p99)));
        json_object_set_new(
            j, "server_unstaged_ms",
            json_pack("{s:o,s:o}", "p50", jnum(s->unstaged_p50), "p99", jnum(s->unstaged_p99)));
        json_object_set_new(j, "warmup_errors", json_integer(s->warm_errors));
    }
    json_object_set_new(j, "truncated_oom", json_boolean(s->oom));
    return j;
}

static void print_errors(const stats *s)
{
    int any = 0;
    for (int c = 100; c < 600; c++)
        if (s->status[c] && c != 200)
            printf("%s%d: %ld", any++ ? ", " : "", c, s->status[c]);
    for (int e = 1; e < NERR; e++)
        if (s->errs[e])
            printf("%s%s: %ld", any++ ? ", " : "", tb_err_name(e), s->errs[e]);
    if (!any)
        printf("-");
}

void tb_print_run(const options *o, const stats *s)
{
    if (s->rate > 0)
        printf("open loop at %s: %.1f req/s scheduled (%s), up to %d in flight\n", o->url, s->rate,
               o->arrivals == ARR_POISSON ? "Poisson" : "constant", s->connections);
    else
        printf("closed loop at %s: %d connection%s\n", o->url, s->connections,
               s->connections == 1 ? "" : "s");
    printf("  requests     %ld: %ld ok, %ld errors (warm-up %ld, %ld failed)\n", s->n, s->ok,
           s->errors, o->warmup, s->warm_errors);
    printf("  errors       ");
    print_errors(s);
    printf("; reconnects %ld\n", s->reconnects);
    printf("  rate         %.2f req/s achieved, %.2f ok/s (%.2f s)\n", s->achieved_rate,
           s->throughput, s->secs);
    printf("  latency ms   min %.3f  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean "
           "%.3f%s\n",
           s->lat_min, s->lat[0], s->lat[1], s->lat[2], s->lat[3], s->lat_max, s->lat_mean,
           s->rate > 0 ? "  (from the scheduled send)" : "");
    if (s->rate > 0) {
        printf("  service ms   p50 %.3f  p99 %.3f  (from the actual send)\n", s->svc[0], s->svc[2]);
        printf("  send lag     %ld sends more than 1 ms late, p99 %.3f ms, max %.3f ms%s\n",
               s->late, s->lag_p99, s->lag_max,
               s->late > s->n / 100 ? "  (all connections were busy: raise --connections if the "
                                      "server is not the limit)"
                                    : "");
    }
    int nk = 0;
    for (int k = 0; k < NKIND; k++)
        nk += s->kind_n[k] > 0;
    if (nk > 1)
        for (int k = 0; k < NKIND; k++)
            if (s->kind_n[k])
                printf("  %-12s %ld requests, %ld ok, p50 %.3f ms, p99 %.3f ms\n", tb_kind_names[k],
                       s->kind_n[k], s->kind_ok[k], s->kind_p50[k], s->kind_p99[k]);
    if (s->cache_hit + s->cache_miss)
        printf("  cache        %ld hits, %ld misses (embedding)\n", s->cache_hit, s->cache_miss);
    if (s->resent)
        printf("  resent       %ld requests sent again with the image after a 404 for image_id\n",
               s->resent);
    if (s->n_inst) {
        printf("  instances   ");
        for (int i = 0; i < s->n_inst; i++)
            printf(" %s: %ld", s->inst[i], s->inst_n[i]);
        printf("\n");
    }
    if (!isnan(s->stage_p50[ST_TOTAL])) {
        printf("  server p50   ");
        for (int k = 0; k < NST; k++)
            if (!isnan(s->stage_p50[k]))
                printf(" %s %.3f", tb_stage_names[k], s->stage_p50[k]);
        printf("\n");
    }
    if (!isnan(s->ovh_p50))
        printf("  overhead ms  p50 %.3f  p99 %.3f  (service time - queue - encode - "
               "decode_masks - postprocess)\n",
               s->ovh_p50, s->ovh_p99);
    if (!isnan(s->unstaged_p50))
        printf("  unstaged ms  p50 %.3f  p99 %.3f  (server total - its stages: parse, cache "
               "lookup, mask encoding, JSON)\n",
               s->unstaged_p50, s->unstaged_p99);
    if (!isnan(s->outside_p50))
        printf("  outside ms   p50 %.3f  p99 %.3f  (service time - server total: sockets, "
               "response write)\n",
               s->outside_p50, s->outside_p99);
    if (s->oom)
        printf("  (out of memory for records: the run stopped early)\n");
}

void tb_print_row_head(const options *o)
{
    printf("%10s %9s %9s %9s %9s %9s %9s %9s %7s  %s\n", o->sweep == SWEEP_RATE ? "rate" : "conc",
           "achieved", "ok/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "late",
           "errors");
}

void tb_print_row(const stats *s)
{
    printf("%10g %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %7ld  ", s->x, s->achieved_rate,
           s->throughput, s->lat[0], s->lat[1], s->lat[2], s->lat[3], s->lat_max, s->late);
    print_errors(s);
    printf("\n");
}

/* ---- plot --------------------------------------------------------------- */

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else if (*s == '"')
            fputs("&quot;", f);
        else if ((unsigned char)*s >= 0x20)
            fputc(*s, f);
    }
}

/* A "nice" decade step (1, 2, 5 x 10^k) at or below v. */
static double nice_floor(double v)
{
    double d = pow(10, floor(log10(v)));
    return v >= 5 * d ? 5 * d : v >= 2 * d ? 2 * d : d;
}

static double nice_ceil(double v)
{
    double d = pow(10, floor(log10(v)));
    return v <= d ? d : v <= 2 * d ? 2 * d : v <= 5 * d ? 5 * d : 10 * d;
}

/*
 * A line chart as SVG: n points per series at positions px (0..1 along x,
 * labelled xl), latency on a log scale. One polyline per series with a
 * circle per point; a NaN value breaks the line. Returns 0 or -1.
 */
static int svg_chart(const char *path, const char *title, const char *xlabel, int n,
                     const double *px, char xl[][32], int ns, const char *const *names,
                     double ys[][MAX_STEPS])
{
    static const char *const colors[] = {"#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#7f7f7f"};
    const double W = 760, H = 460, L = 80, R = 130, T = 50, B = 60;
    double lo = INFINITY, hi = 0;
    for (int s = 0; s < ns; s++)
        for (int i = 0; i < n; i++)
            if (isfinite(ys[s][i]) && ys[s][i] > 0) {
                lo = fmin(lo, ys[s][i]);
                hi = fmax(hi, ys[s][i]);
            }
    if (!(hi > 0)) {
        lo = 1;
        hi = 10;
    }
    lo = nice_floor(lo);
    hi = nice_ceil(hi);
    if (hi <= lo)
        hi = lo * 10;
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    double pw = W - L - R, ph = H - T - B;
#define SX(u) (L + (u)*pw)
#define SY(v) (T + ph - (log10(v) - log10(lo)) / (log10(hi) - log10(lo)) * ph)
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
            "<title>",
            W, H, W, H);
    xml_text(f, title);
    fprintf(f, "</title>\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"24\" font-size=\"14\" text-anchor=\"middle\">", W / 2);
    xml_text(f, title);
    fprintf(f, "</text>\n");
    /* y grid and labels at 1, 2, 5 x 10^k */
    for (double d = pow(10, floor(log10(lo))); d <= hi * 1.0001; d *= 10)
        for (int m = 0; m < 3; m++) {
            double v = d * (m == 0 ? 1 : m == 1 ? 2 : 5);
            if (v < lo * 0.9999 || v > hi * 1.0001)
                continue;
            fprintf(f,
                    "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
                    "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                    L, L + pw, SY(v), SY(v), L - 6, SY(v) + 4, v);
        }
    int every = n > 12 ? (n + 11) / 12 : 1;
    for (int i = 0; i < n; i++) {
        fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n",
                SX(px[i]), SX(px[i]), T, T + ph);
        if (i % every == 0) {
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", SX(px[i]),
                    T + ph + 18);
            xml_text(f, xl[i]);
            fprintf(f, "</text>\n");
        }
    }
    fprintf(f,
            "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
            "stroke=\"#333\"/>\n",
            L, T, pw, ph);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", L + pw / 2, H - 16);
    xml_text(f, xlabel);
    fprintf(f,
            "</text>\n<text transform=\"translate(20 %.1f) rotate(-90)\" "
            "text-anchor=\"middle\">latency, ms (log scale)</text>\n",
            T + ph / 2);
    for (int s = 0; s < ns; s++) {
        const char *col = colors[s % 5];
        fprintf(f, "<g class=\"series\" data-name=\"%s\">\n", names[s]);
        int open = 0;
        for (int i = 0; i < n; i++) {
            double v = ys[s][i];
            if (!(isfinite(v) && v > 0)) {
                if (open)
                    fprintf(f, "\"/>\n");
                open = 0;
                continue;
            }
            if (!open)
                fprintf(f,
                        "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                        "points=\"",
                        col);
            fprintf(f, "%s%.1f,%.1f", open ? " " : "", SX(px[i]), SY(v));
            open = 1;
        }
        if (open)
            fprintf(f, "\"/>\n");
        for (int i = 0; i < n; i++)
            if (isfinite(ys[s][i]) && ys[s][i] > 0) {
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>%s ",
                        SX(px[i]), SY(ys[s][i]), col, names[s]);
                xml_text(f, xl[i]);
                fprintf(f, ": %.3f ms</title></circle>\n", ys[s][i]);
            }
        fprintf(f,
                "</g>\n<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
                "stroke-width=\"2\"/>\n<text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
                L + pw + 14, L + pw + 34, T + 14 + s * 20.0, T + 14 + s * 20.0, col, L + pw + 40,
                T + 18 + s * 20.0, names[s]);
    }
#undef SX
#undef SY
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? 0 : -1;
}

/* The sweep plot (percentiles vs the swept value) or, for one run, the
 * latency spectrum (latency vs percentile, on a "nines" axis). */
int tb_plot(const options *o, const stats *st, int n)
{
    static double ys[NPCT][MAX_STEPS];
    static char xl[MAX_STEPS][32];
    double px[MAX_STEPS];
    char title[1400];
    if (o->sweep) {
        double lo = st[0].x, hi = st[0].x;
        for (int i = 0; i < n; i++) {
            lo = fmin(lo, st[i].x);
            hi = fmax(hi, st[i].x);
        }
        int logx = lo > 0 && hi / lo >= 20;
        for (int i = 0; i < n; i++) {
            px[i] = hi == lo ? 0.5
                    : logx   ? (log(st[i].x) - log(lo)) / (log(hi) - log(lo))
                             : (st[i].x - lo) / (hi - lo);
            snprintf(xl[i], sizeof xl[i], "%g", st[i].x);
            for (int p = 0; p < NPCT; p++)
                ys[p][i] = st[i].lat[p];
        }
        if (o->title)
            snprintf(title, sizeof title, "%s", o->title);
        else
            snprintf(title, sizeof title, "tasam-bench %s sweep, %s",
                     o->sweep == SWEEP_RATE ? "rate" : "concurrency", o->url);
        return svg_chart(
            o->plot, title,
            o->sweep == SWEEP_RATE
                ? (logx ? "scheduled rate, requests/s (log scale)" : "scheduled rate, requests/s")
                : (logx ? "connections (log scale)" : "connections"),
            n, px, xl, NPCT, tb_pct_text, ys);
    }
    static const char *const name[] = {"latency"};
    for (int i = 0; i < 10; i++) {
        px[i] = (i == 0 ? 0 : log10(100.0 / (100.0 - tb_spectrum_p[i]))) / 4.0;
        snprintf(xl[i], sizeof xl[i], "%g%%", tb_spectrum_p[i]);
        ys[0][i] = st[0].spectrum[i];
    }
    px[0] = 0;
    if (o->title)
        snprintf(title, sizeof title, "%s", o->title);
    else
        snprintf(title, sizeof title, "tasam-bench latency by percentile, %s", o->url);
    return svg_chart(o->plot, title, "percentile", 10, px, xl, 1, name, ys);
}
