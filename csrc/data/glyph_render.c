/* glyph_render.c - one letter image: scale, rotate, fit, embolden, centre,
 * rasterize (FreeType's anti-aliasing, 8-bit coverage), ink and noise. */
#include "data/data_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include FT_BBOX_H

#define SIDE LPS_GLYPH_SIDE

void lps_glyph_draw(lps_rng *r, lps_glyph_params *p)
{
    p->face = (int)lps_rng_below(r, LPS_GLYPH_NFACES);
    p->size = 16.0 + 7.0 * lps_rng_uniform(r);
    p->angle = -15.0 + 30.0 * lps_rng_uniform(r);
    p->dx = -2.0 + 4.0 * lps_rng_uniform(r);
    p->dy = -2.0 + 4.0 * lps_rng_uniform(r);
    p->stroke = -0.4 + 1.4 * lps_rng_uniform(r);
    p->ink = 0.75 + 0.25 * lps_rng_uniform(r);
    p->noise = 0.05;
}

static int in_range(double v, double lo, double hi) { return v >= lo && v <= hi; }

static lps_status check(int cls, const lps_glyph_params *p, const lps_rng *r)
{
    if (cls < 0 || cls >= LPS_GLYPH_ALL)
        return lps_fail(LPS_ERANGE, "glyph_render: class %d out of range 0..%d", cls,
                        LPS_GLYPH_ALL - 1);
    if (p->face < 0 || p->face >= LPS_GLYPH_NFACES)
        return lps_fail(LPS_ERANGE, "glyph_render: face %d out of range 0..%d", p->face,
                        LPS_GLYPH_NFACES - 1);
    const struct { const char *name; double v, lo, hi; } f[] = {
        {"size", p->size, 1e-3, 64}, {"angle", p->angle, -180, 180}, {"dx", p->dx, -14, 14},
        {"dy", p->dy, -14, 14}, {"stroke", p->stroke, -2, 4}, {"ink", p->ink, 0, 1},
        {"noise", p->noise, 0, 1}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (isnan(f[i].v))
            return lps_fail(LPS_ENUMERIC, "glyph_render: %s is NaN", f[i].name);
        else if (!in_range(f[i].v, f[i].lo, f[i].hi))
            return lps_fail(LPS_EINVAL, "glyph_render: %s = %g is outside [%g, %g]", f[i].name,
                            f[i].v, f[i].lo, f[i].hi);
    if (p->noise > 0 && !r) return lps_fail(LPS_EINVAL, "glyph_render: noise needs a generator");
    return LPS_OK;
}

/* dst = src scaled by s about its bbox centre and rotated by (c, sn), in
 * 26.6 pixels around the origin. */
static void place(FT_Outline *dst, const lps_glyph_outline *src, double s, double c, double sn)
{
    const FT_Outline *o = &src->o;
    dst->n_points = o->n_points;
    dst->n_contours = o->n_contours;
    dst->flags = o->flags;
    memcpy(dst->tags, o->tags, (size_t)o->n_points);
    memcpy(dst->contours, o->contours, (size_t)o->n_contours * sizeof *o->contours);
    for (int i = 0; i < o->n_points; i++) {
        double u = ((double)o->points[i].x - src->cx) * s, v = ((double)o->points[i].y - src->cy) * s;
        dst->points[i].x = (FT_Pos)lround(64.0 * (c * u - sn * v));
        dst->points[i].y = (FT_Pos)lround(64.0 * (sn * u + c * v));
    }
}

/* Render into out with scratch (capacity: the handle's largest outline). */
static lps_status render(const lps_glyphs *g, FT_Outline *scratch, unsigned char *cov, int cls,
                         const lps_glyph_params *p, lps_rng *r, float *out)
{
    lps_status st = check(cls, p, r);
    if (st) return st;
    const lps_glyph_outline *src = &g->glyph[p->face][cls];
    double rad = p->angle * (3.14159265358979323846 / 180.0), c = cos(rad), sn = sin(rad);
    double s = p->size / g->cap[p->face];
    FT_BBox b;
    place(scratch, src, s, c, sn);
    FT_Outline_Get_BBox(scratch, &b);
    FT_Pos w = b.xMax - b.xMin, h = b.yMax - b.yMin;
    double extent = (double)(w > h ? w : h) / 64.0;
    if (extent > LPS_GLYPH_MAX_EXTENT) /* too wide or tall to stay in the frame */
        place(scratch, src, s * (LPS_GLYPH_MAX_EXTENT / extent), c, sn);
    if (p->stroke != 0 && FT_Outline_Embolden(scratch, (FT_Pos)lround(64.0 * p->stroke)))
        return lps_fail(LPS_EINVAL, "glyph_render: FreeType cannot embolden '%c' of %s by %g",
                        lps_glyph_char(cls), lps_glyph_face_info(p->face)->name, p->stroke);
    FT_Outline_Get_BBox(scratch, &b);
    /* centre of the frame, y up: (SIDE/2 + dx, SIDE/2 - dy) */
    FT_Pos tx = (FT_Pos)lround(64.0 * (SIDE / 2.0 + p->dx)) - (b.xMin + b.xMax) / 2;
    FT_Pos ty = (FT_Pos)lround(64.0 * (SIDE / 2.0 - p->dy)) - (b.yMin + b.yMax) / 2;
    FT_Outline_Translate(scratch, tx, ty);
    memset(cov, 0, SIDE * SIDE);
    FT_Bitmap bm;
    memset(&bm, 0, sizeof bm);
    bm.rows = SIDE;
    bm.width = SIDE;
    bm.pitch = SIDE; /* positive: the first row is the top one */
    bm.buffer = cov;
    bm.num_grays = 256;
    bm.pixel_mode = FT_PIXEL_MODE_GRAY;
    if (FT_Outline_Get_Bitmap(g->lib, scratch, &bm))
        return lps_fail(LPS_EINVAL, "glyph_render: FreeType cannot rasterize '%c' of %s",
                        lps_glyph_char(cls), lps_glyph_face_info(p->face)->name);
    for (int i = 0; i < SIDE * SIDE; i++) {
        double v = (double)cov[i] / 255.0 * p->ink;
        if (cov[i] && p->noise > 0) v *= 1.0 + p->noise * lps_rng_normal(r);
        out[i] = (float)(v < 0 ? 0 : v > 1 ? 1 : v);
    }
    return LPS_OK;
}

static lps_status scratch_new(const lps_glyphs *g, FT_Outline *o)
{
    memset(o, 0, sizeof *o);
    if (FT_Outline_New(g->lib, (FT_UInt)g->max_points, g->max_contours, o))
        return lps_fail(LPS_ENOMEM, "glyph_render: out of memory");
    return LPS_OK;
}

lps_status lps_glyph_render(const lps_glyphs *g, int cls, const lps_glyph_params *p, lps_rng *r,
                            float *out)
{
    FT_Outline o;
    unsigned char cov[SIDE * SIDE];
    lps_status s = scratch_new(g, &o);
    if (s) return s;
    s = render(g, &o, cov, cls, p, r, out);
    FT_Outline_Done(g->lib, &o);
    return s;
}

/* The seed of the k-th image of class cls: a mix other than splitmix's own
 * increments, so no image's stream is another's shifted by a step. */
static uint64_t image_seed(uint64_t seed, int cls, int64_t k)
{
    uint64_t z = seed ^ 0x6a09e667f3bcc909ULL;
    z = (z ^ (z >> 31)) * 0xd6e8feb86659fd93ULL;
    z ^= (uint64_t)cls * 0x9fb21c651e98df25ULL;
    z = (z ^ (z >> 29)) * 0xbf58476d1ce4e5b9ULL;
    return z ^ ((uint64_t)k * 0xd1b54a32d192ed03ULL);
}

lps_status lps_glyphs_render(const lps_glyphs *g, lps_tensor *out, const int32_t *classes,
                             uint64_t seed)
{
    int64_t n = out->ndim ? out->shape[0] : 0;
    if (out->ndim < 2 || out->numel != n * SIDE * SIDE)
        return lps_fail(LPS_ESHAPE, "glyphs_render: out must be N x %d (or N x 1 x %d x %d), got %s",
                        SIDE * SIDE, SIDE, SIDE, SH(out));
    for (int64_t i = 0; i < n; i++)
        if (classes[i] < 0 || classes[i] >= LPS_GLYPH_ALL)
            return lps_fail(LPS_ERANGE, "glyphs_render: image %lld has class %d outside 0..%d",
                            (long long)i + 1, (int)classes[i], LPS_GLYPH_ALL - 1);
    FT_Outline o;
    unsigned char cov[SIDE * SIDE];
    int64_t seen[LPS_GLYPH_ALL] = {0};
    lps_status s = scratch_new(g, &o);
    for (int64_t i = 0; i < n && !s; i++) {
        lps_rng r;
        lps_glyph_params p;
        lps_rng_seed(&r, image_seed(seed, classes[i], seen[classes[i]]++));
        lps_glyph_draw(&r, &p);
        s = render(g, &o, cov, classes[i], &p, &r, out->data + i * SIDE * SIDE);
    }
    FT_Outline_Done(g->lib, &o);
    return s;
}
