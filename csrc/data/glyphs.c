/* glyphs.c - the font faces of the letter images: a fixed table of Debian
 * font files, loaded once into outlines (font units) that rendering copies. */
#include "data/data_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include FT_BBOX_H

#define DEJAVU "/usr/share/fonts/truetype/dejavu/"
#define LIBERATION "/usr/share/fonts/truetype/liberation2/"
#define FREEFONT "/usr/share/fonts/truetype/freefont/"
#define URW "/usr/share/fonts/opentype/urw-base35/"

/* Spread over shapes: sans, serif, mono; regular, bold, italic; geometric,
 * humanist, slab-like (Courier), calligraphic (Palatino). */
static const lps_glyph_face faces[LPS_GLYPH_NFACES] = {
    {"DejaVu Sans", "sans", DEJAVU "DejaVuSans.ttf", "fonts-dejavu-core"},
    {"DejaVu Serif Bold", "serif bold", DEJAVU "DejaVuSerif-Bold.ttf", "fonts-dejavu-core"},
    {"DejaVu Sans Mono", "mono", DEJAVU "DejaVuSansMono.ttf", "fonts-dejavu-core"},
    {"Liberation Serif", "serif", LIBERATION "LiberationSerif-Regular.ttf", "fonts-liberation2"},
    {"Liberation Sans Italic", "sans italic", LIBERATION "LiberationSans-Italic.ttf",
     "fonts-liberation2"},
    {"Liberation Mono Bold", "mono bold", LIBERATION "LiberationMono-Bold.ttf", "fonts-liberation2"},
    {"FreeSerif Italic", "serif italic", FREEFONT "FreeSerifItalic.ttf", "fonts-freefont-ttf"},
    {"FreeSans Bold", "sans bold", FREEFONT "FreeSansBold.ttf", "fonts-freefont-ttf"},
    {"FreeMono", "mono light", FREEFONT "FreeMono.ttf", "fonts-freefont-ttf"},
    {"URW Gothic Book", "sans geometric", URW "URWGothic-Book.otf", "fonts-urw-base35"},
    {"C059 Italic", "serif italic", URW "C059-Italic.otf", "fonts-urw-base35"},
    {"P052 Roman", "serif", URW "P052-Roman.otf", "fonts-urw-base35"},
};

int lps_glyph_nfaces(void) { return LPS_GLYPH_NFACES; }

const lps_glyph_face *lps_glyph_face_info(int i)
{
    return i >= 0 && i < LPS_GLYPH_NFACES ? &faces[i] : NULL;
}

int lps_glyph_letter(int cls)
{
    if (cls < 0 || cls >= LPS_GLYPH_CLASSES) return 0;
    return cls < 26 ? 'A' + cls : 'a' + (cls - 26);
}

int lps_glyph_char(int cls)
{
    if (cls >= LPS_GLYPH_CLASSES && cls < LPS_GLYPH_ALL) return '0' + (cls - LPS_GLYPH_CLASSES);
    return lps_glyph_letter(cls);
}

void lps_glyphs_free(lps_glyphs *g)
{
    if (!g) return;
    for (int f = 0; f < LPS_GLYPH_NFACES; f++)
        for (int c = 0; c < LPS_GLYPH_ALL; c++)
            if (g->glyph[f][c].o.points) FT_Outline_Done(g->lib, &g->glyph[f][c].o);
    if (g->lib) FT_Done_FreeType(g->lib);
    free(g);
}

/* Copy the outline of letter ch of face into *dst (font units). */
static lps_status load_outline(lps_glyphs *g, FT_Face face, int fi, int ch, const char *path,
                               lps_glyph_outline *dst)
{
    FT_UInt idx = FT_Get_Char_Index(face, (FT_ULong)ch);
    if (idx == 0)
        return lps_fail(LPS_EFORMAT, "glyphs: %s (%s) has no glyph for '%c'", path,
                        faces[fi].package, ch);
    if (FT_Load_Glyph(face, idx, FT_LOAD_NO_SCALE) ||
        face->glyph->format != FT_GLYPH_FORMAT_OUTLINE)
        return lps_fail(LPS_EFORMAT, "glyphs: %s (%s): cannot load the outline of '%c'", path,
                        faces[fi].package, ch);
    FT_Outline *src = &face->glyph->outline;
    if (src->n_points <= 0 || FT_Outline_New(g->lib, (FT_UInt)src->n_points, src->n_contours, &dst->o))
        return lps_fail(LPS_EFORMAT, "glyphs: %s (%s): empty or unusable outline for '%c'", path,
                        faces[fi].package, ch);
    FT_Outline_Copy(src, &dst->o);
    FT_BBox b;
    FT_Outline_Get_BBox(&dst->o, &b);
    dst->cx = 0.5 * ((double)b.xMin + (double)b.xMax);
    dst->cy = 0.5 * ((double)b.yMin + (double)b.yMax);
    if (src->n_points > g->max_points) g->max_points = src->n_points;
    if (src->n_contours > g->max_contours) g->max_contours = src->n_contours;
    if (ch == 'H') g->cap[fi] = (double)b.yMax - (double)b.yMin;
    return LPS_OK;
}

static lps_status load_face(lps_glyphs *g, int fi, const char *root)
{
    char path[1024];
    int n = snprintf(path, sizeof path, "%s%s", root ? root : "", faces[fi].path);
    if (n < 0 || (size_t)n >= sizeof path)
        return lps_fail(LPS_EINVAL, "glyphs: font root '%s' is too long", root);
    FILE *probe = fopen(path, "rb");
    if (!probe)
        return lps_fail(LPS_EIO, "glyphs: font file %s is missing (install the Debian package %s)",
                        path, faces[fi].package);
    fclose(probe);
    FT_Face face;
    if (FT_New_Face(g->lib, path, 0, &face))
        return lps_fail(LPS_EIO, "glyphs: %s (Debian package %s) is not a font FreeType can read",
                        path, faces[fi].package);
    lps_status s = LPS_OK;
    for (int c = 0; c < LPS_GLYPH_ALL && !s; c++)
        s = load_outline(g, face, fi, lps_glyph_char(c), path, &g->glyph[fi][c]);
    if (!s && !(g->cap[fi] > 0))
        s = lps_fail(LPS_EFORMAT, "glyphs: %s: its 'H' has no height", path);
    FT_Done_Face(face);
    return s;
}

lps_status lps_glyphs_open(lps_glyphs **out, const char *root)
{
    *out = NULL;
    lps_glyphs *g = calloc(1, sizeof *g);
    if (!g) return lps_fail(LPS_ENOMEM, "glyphs: out of memory");
    if (FT_Init_FreeType(&g->lib)) {
        free(g);
        return lps_fail(LPS_ENOMEM, "glyphs: FreeType failed to initialise");
    }
    for (int f = 0; f < LPS_GLYPH_NFACES; f++) {
        lps_status s = load_face(g, f, root);
        if (s) {
            lps_glyphs_free(g);
            return s;
        }
    }
    *out = g;
    return LPS_OK;
}
