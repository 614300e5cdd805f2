/* mset_codec.c - ModelSet tensor codecs: every payload is one standard zstd
 * frame (so `zstd -d` decodes a payload cut from the file). */
#include "store/mset_format.h"

#include <pthread.h>
#include <stdlib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, as iSCSI, ext4 and
 * Btrfs): the SSE4.2 instruction where the CPU has it (about 4x zlib's
 * CRC-32, which would otherwise cost a tenth of a full read), else
 * slicing-by-8 tables. */
static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define MS_HAVE_SSE42 1
static int crc_hw;
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(const unsigned char *p, size_t n)
{
    uint64_t c = 0xffffffffu;
    for (; n && ((uintptr_t)p & 7); n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
    }
    for (; n; n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
#ifdef MS_HAVE_SSE42
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_soft(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^
            crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
    }
    for (; n; n--) c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

uint32_t ms_crc(const void *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
#ifdef MS_HAVE_SSE42
    if (crc_hw) return crc_sse42(p, n);
#endif
    return crc_soft(p, n);
}

uint32_t lps_crc32c(const void *p, size_t n) { return ms_crc(p, n); }

uint32_t lps_crc32c_portable(const void *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
    return crc_soft(p, n);
}

int ms_crc_bad(uint32_t stored, uint32_t computed)
{
#ifdef LPS_FUZZING
    (void)stored; (void)computed;
    return 0;
#else
    return stored != computed;
#endif
}

static int host_le(void)
{
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

uint64_t ms_raw_bytes(int codec, int64_t n)
{
    return (uint64_t)n * (codec == LPS_CODEC_BF16 ? 2u : 4u);
}

size_t ms_encode_bound(int codec, int64_t n)
{
    /* + room for the block headers each plane flush adds */
    return ZSTD_compressBound((size_t)ms_raw_bytes(codec, n)) + 64;
}

/* float32 -> bfloat16 by round-to-nearest-even; NaN stays a (quiet) NaN. */
static uint16_t to_bf16(uint32_t u)
{
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Byte planes: plane k holds byte k (little-endian) of every value, so the
 * sign/exponent bytes, which repeat a lot, sit together for zstd. */
static void shuffle(unsigned char *dst, const float *x, int64_t n, int codec)
{
    const uint32_t *u = (const uint32_t *)(const void *)x;
    if (codec == LPS_CODEC_BF16) {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = to_bf16(u[i]);
            dst[i] = (unsigned char)h;
            dst[n + i] = (unsigned char)(h >> 8);
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        uint32_t v = u[i];
        dst[i] = (unsigned char)v;
        dst[n + i] = (unsigned char)(v >> 8);
        dst[2 * n + i] = (unsigned char)(v >> 16);
        dst[3 * n + i] = (unsigned char)(v >> 24);
    }
}

static void unshuffle(float *x, const unsigned char *src, int64_t n, int codec)
{
    uint32_t *u = (uint32_t *)(void *)x;
#ifdef __SSE2__
    /* interleave 16 values at a time: bytes a,b -> 16-bit pairs, then pairs
     * ab,cd -> 32-bit values (x86 is little-endian, as the format) */
    if (codec != LPS_CODEC_BF16) {
        const unsigned char *pa = src, *pb = src + n, *pc = src + 2 * n, *pd = src + 3 * n;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(pa + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(pb + i));
            __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(pc + i));
            __m128i d = _mm_loadu_si128((const __m128i *)(const void *)(pd + i));
            __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
            __m128i cd0 = _mm_unpacklo_epi8(c, d), cd1 = _mm_unpackhi_epi8(c, d);
            __m128i *o = (__m128i *)(void *)(u + i);
            _mm_storeu_si128(o, _mm_unpacklo_epi16(ab0, cd0));
            _mm_storeu_si128(o + 1, _mm_unpackhi_epi16(ab0, cd0));
            _mm_storeu_si128(o + 2, _mm_unpacklo_epi16(ab1, cd1));
            _mm_storeu_si128(o + 3, _mm_unpackhi_epi16(ab1, cd1));
        }
        for (; i < n; i++)
            u[i] = (uint32_t)pa[i] | (uint32_t)pb[i] << 8 | (uint32_t)pc[i] << 16 |
                   (uint32_t)pd[i] << 24;
        return;
    }
#endif
    if (codec == LPS_CODEC_BF16) {
        for (int64_t i = 0; i < n; i++)
            u[i] = ((uint32_t)src[i] | (uint32_t)src[n + i] << 8) << 16;
        return;
    }
    const unsigned char *a = src, *b = src + n, *c = src + 2 * n, *d = src + 3 * n;
    for (int64_t i = 0; i < n; i++)
        u[i] = (uint32_t)a[i] | (uint32_t)b[i] << 8 | (uint32_t)c[i] << 16 | (uint32_t)d[i] << 24;
}

static void bswap32s(void *p, int64_t n)
{
    uint32_t *u = p;
    for (int64_t i = 0; i < n; i++)
        u[i] = (u[i] >> 24) | ((u[i] >> 8) & 0xff00u) | ((u[i] << 8) & 0xff0000u) | (u[i] << 24);
}

static lps_status zfail(size_t r, const char *who, const char *what)
{
    return lps_fail(LPS_EFORMAT, "%s: %s: %s", who, what, ZSTD_getErrorName(r));
}

lps_status ms_encode(ZSTD_CCtx *cc, int codec, int level, const float *x, int64_t n,
                     unsigned char *out, size_t cap, size_t *outlen, const char *who)
{
    size_t raw = (size_t)ms_raw_bytes(codec, n);
    unsigned char *tmp = NULL;
    const unsigned char *src = (const unsigned char *)x;
    if (codec != LPS_CODEC_PLAIN || !host_le()) {
        tmp = malloc(raw ? raw : 1);
        if (!tmp) return lps_fail(LPS_ENOMEM, "%s: cannot allocate %zu bytes", who, raw);
        if (codec == LPS_CODEC_PLAIN) {
            memcpy(tmp, x, raw);
            bswap32s(tmp, n);
        } else
            shuffle(tmp, x, n, codec); /* reads values, so byte order is handled */
        src = tmp;
    }
    ZSTD_CCtx_reset(cc, ZSTD_reset_session_and_parameters);
    size_t r = ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level);
    /* no XXH64 in the frame: the table's CRC-32C covers it, and the
     * checksum would cost a third of the decoding time */
    if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 0);
    if (!ZSTD_isError(r)) r = ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 1);
    if (!ZSTD_isError(r)) r = ZSTD_CCtx_setPledgedSrcSize(cc, raw);
    if (ZSTD_isError(r)) {
        free(tmp);
        return zfail(r, who, "zstd setup");
    }
    /* Each plane ends its own zstd blocks (a flush), so every plane gets its
     * own literal statistics: the exponent plane is far from uniform. */
    int planes = codec == LPS_CODEC_PLAIN ? 1 : codec == LPS_CODEC_BF16 ? 2 : 4;
    size_t plane = (size_t)n * (codec == LPS_CODEC_PLAIN ? 4 : 1);
    ZSTD_outBuffer ob = {out, cap, 0};
    for (int k = 0; k < planes; k++) {
        ZSTD_inBuffer ib = {src + (size_t)k * plane, plane, 0};
        ZSTD_EndDirective end = k == planes - 1 ? ZSTD_e_end : ZSTD_e_flush;
        do {
            r = ZSTD_compressStream2(cc, &ob, &ib, end);
            if (ZSTD_isError(r)) {
                free(tmp);
                return zfail(r, who, "zstd compression");
            }
            if (r && ob.pos == ob.size) {
                free(tmp);
                return lps_fail(LPS_ENOMEM, "%s: compressed frame exceeds its bound", who);
            }
        } while (r != 0 || ib.pos < ib.size);
    }
    free(tmp);
    *outlen = ob.pos;
    return LPS_OK;
}

lps_status ms_decode(ZSTD_DCtx *dc, int codec, const unsigned char *in, size_t len, float *out,
                     int64_t n, const char *who)
{
    uint64_t raw = ms_raw_bytes(codec, n);
    unsigned long long declared = ZSTD_getFrameContentSize(in, len);
    if (declared == ZSTD_CONTENTSIZE_ERROR)
        return lps_fail(LPS_EFORMAT, "%s: payload is not a zstd frame", who);
    if (declared == ZSTD_CONTENTSIZE_UNKNOWN || declared != raw)
        return lps_fail(LPS_EFORMAT, "%s: zstd frame declares %llu bytes, the shape needs %llu",
                        who, declared, (unsigned long long)raw);
    size_t fl = ZSTD_findFrameCompressedSize(in, len);
    if (ZSTD_isError(fl) || fl != len)
        return lps_fail(LPS_EFORMAT, "%s: payload is not exactly one zstd frame", who);
    if (raw / MS_ZSTD_MAX_RATIO > (uint64_t)len)
        return lps_fail(LPS_EFORMAT, "%s: %llu bytes cannot come from a %zu-byte frame", who,
                        (unsigned long long)raw, len);
    int direct = codec == LPS_CODEC_PLAIN && host_le() && out;
    unsigned char *tmp = NULL;
    void *dst = out;
    if (!direct) {
        tmp = malloc(raw ? (size_t)raw : 1);
        if (!tmp) return lps_fail(LPS_ENOMEM, "%s: cannot allocate %llu bytes", who,
                                  (unsigned long long)raw);
        dst = tmp;
    }
    size_t r = ZSTD_decompressDCtx(dc, dst, (size_t)raw, in, len);
    if (ZSTD_isError(r) || r != raw) {
        free(tmp);
        if (ZSTD_isError(r)) return zfail(r, who, "zstd frame");
        return lps_fail(LPS_EFORMAT, "%s: zstd frame decoded to %zu bytes, expected %llu", who, r,
                        (unsigned long long)raw);
    }
    if (out && !direct) {
        if (codec == LPS_CODEC_PLAIN) {
            memcpy(out, tmp, (size_t)raw);
            bswap32s(out, n); /* only reached on big-endian hosts */
        } else
            unshuffle(out, tmp, n, codec);
    }
    free(tmp);
    return LPS_OK;
}
