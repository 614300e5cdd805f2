/* data_internal.h - the glyph handle, shared by glyphs.c and glyph_render.c. */
#ifndef LPS_DATA_INTERNAL_H
#define LPS_DATA_INTERNAL_H

#include "core/internal.h"

#include <ft2build.h>
#include FT_FREETYPE_H
#include FT_OUTLINE_H

#define LPS_GLYPH_NFACES 12

typedef struct lps_glyph_outline {
    FT_Outline o;        /* in font units */
    double cx, cy;       /* centre of its exact bounding box, font units */
} lps_glyph_outline;

struct lps_glyphs {
    FT_Library lib;
    double cap[LPS_GLYPH_NFACES]; /* height of 'H', font units */
    lps_glyph_outline glyph[LPS_GLYPH_NFACES][LPS_GLYPH_ALL]; /* letters, then digits */
    int max_points, max_contours;  /* the largest outline, for scratch space */
};

#endif
