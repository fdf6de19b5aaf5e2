/*
 * engine/sam_postprocess.c: SAM's postprocess_masks (bilinear to 1024, crop, bilinear to the
 * original) and the threshold, in bands where the logits are.
 *
 * Shapes use the letters of sam_internal.h.
 */
#include "sam_internal.h"

#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* postprocess: SAM's postprocess_masks, then the threshold             */

/* Workspace of one mask's postprocess: the 1024-wide upscale, one band. */
void eng__sam_post_plan(eng_ctx *ctx)
{
    eng_new3(ctx, 1, ENG_SAM_IMG, ENG_SAM_IMG);
    eng_new2(ctx, 1, BAND_FLOATS);
}

int eng__sam_post_check(const eng_sam_imginfo *info)
{
    int ow = info->orig_w, oh = info->orig_h;
    if (ow < 1 || oh < 1 || ow > BAND_FLOATS || info->input_w < 1 || info->input_h < 1 ||
        info->input_w > ENG_SAM_IMG || info->input_h > ENG_SAM_IMG)
        return eng_error(ENG_EINVAL, "bad image size %dx%d for postprocessing", ow, oh);
    return 0;
}

float eng_sam_stability(uint64_t above_hi, uint64_t above_lo)
{
    /* calculate_stability_score: int32 counts divided in float32 */
    return above_lo ? (float)above_hi / (float)above_lo : 0.0f;
}

/* One low-res logit map lo (256*256 values on the decoder's backend) to
 * mask [orig_h, orig_w] u8 0/1 on the host (logits > 0), and the counts of
 * the stability score at `offset`: counts[0] = |logits > +offset|,
 * counts[1] = |logits > -offset|. Bilinear to 1024, crop to the resized
 * input, bilinear to the original, in bands of rows so the workspace stays
 * small. */
void eng__sam_post_one(eng_sam *m, const eng_tensor *lo, const eng_sam_imginfo *info, float offset,
                       uint8_t *mask, uint64_t counts[2])
{
    eng_ctx *ctx = m->dctx;
    int ow = info->orig_w, oh = info->orig_h;
    int band = BAND_FLOATS / ow;
    if (band > oh)
        band = oh;
    size_t mark = eng_ctx_mark(ctx);
    eng_tensor lo3 = eng_reshape3(*lo, 1, ENG_SAM_LOWRES, ENG_SAM_LOWRES);
    /* of the 1024 x 1024 upscale only the rows the crop to the resized
     * input reads: [1, input_h, 1024] (each output row depends only on its
     * own index, so this is exact) */
    eng_tensor up = eng_new3(ctx, 1, info->input_h, ENG_SAM_IMG);
    eng_resize_bilinear(ctx, &up, &lo3, ENG_SAM_LOWRES, ENG_SAM_LOWRES, ENG_SAM_IMG, 0);
    uint64_t inter = 0, uni = 0;
    for (int y0 = 0; y0 < oh && !ctx->status; y0 += band) {
        int rows = oh - y0 < band ? oh - y0 : band;
        size_t mk = eng_ctx_mark(ctx);
        eng_tensor out = eng_new3(ctx, 1, rows, ow);
        eng_resize_bilinear(ctx, &out, &up, info->input_h, info->input_w, oh, y0);
        /* threshold at 0 (the mask) and at +-1 (the stability score's
         * intersection and union) where the logits are */
        uint64_t band_counts[2] = {0, 0};
        if (!ctx->status) {
            /* the reference's thresholds: float32(0 - offset), float32(0 + offset) */
            int rc = eng_backend_binarize(ctx->be, mask + (size_t)y0 * ow, out.data,
                                          (int64_t)rows * ow, -offset, offset, band_counts);
            if (rc)
                eng_ctx_fail(ctx, rc);
        }
        eng_ctx_release(ctx, mk);
        inter += band_counts[0];
        uni += band_counts[1];
    }
    counts[0] = inter;
    counts[1] = uni;
    eng_ctx_release(ctx, mark);
}

int eng_sam_postprocess(eng_sam *m, const float *low_res, int n, const eng_sam_imginfo *info,
                        uint8_t *masks, float *stability)
{
    int rc = eng__sam_post_check(info);
    if (rc)
        return rc;
    eng_ctx *ctx = m->dctx;
    size_t px = (size_t)info->orig_w * (size_t)info->orig_h;
    eng__sam_begin(ctx);
    eng_tensor lo = eng_new3(ctx, 1, ENG_SAM_LOWRES, ENG_SAM_LOWRES);
    for (int i = 0; i < n && !ctx->status; i++) {
        eng__sam_upload(ctx, &lo, low_res + (size_t)i * ENG_SAM_LOWRES_FLOATS);
        uint64_t counts[2];
        eng__sam_post_one(m, &lo, info, 1.0f, masks + (size_t)i * px, counts);
        if (stability)
            stability[i] = eng_sam_stability(counts[0], counts[1]);
    }
    return eng__sam_end(ctx);
}
