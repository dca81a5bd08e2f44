/* stemedge frame codec: arithmetic (interleaved rANS) coding of detector frames, C API.
 *
 * One call compresses one array into one self-describing *chunk* (magic, version, dtype, shape,
 * model, checksums) that decodes on its own; a frame stack is the natural unit (HDF5/zarr chunk).
 * The array is seen as frames × pixels: pixels = the last two axes (the last one for 1-D), frames =
 * everything before. The format is documented in docs/codec.md.
 *
 * Plain C so the HDF5 filter plugin (a separate shared library, no C++ runtime exceptions across
 * its boundary) and the Python module share it. Every function is thread-safe and never reads or
 * writes outside the buffers it is given; malformed input gives a negative error code.
 */
#ifndef STEMEDGE_CODEC_H
#define STEMEDGE_CODEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types (stored in the chunk header). */
enum se_dtype {
    SE_U8 = 1, SE_U16 = 2, SE_U32 = 3, SE_U64 = 4,
    SE_I8 = 5, SE_I16 = 6, SE_I32 = 7, SE_I64 = 8,
    SE_F32 = 9, SE_F64 = 10, SE_BOOL = 11
};

/* Coding modes. AUTO picks by the data: EVENTS for sparse counted data, DENSE for other integer
 * data (and quantised floats), BYTES for the rest (lossless floats, 64-bit types). */
enum se_mode { SE_MODE_AUTO = 0, SE_MODE_DENSE = 1, SE_MODE_EVENTS = 2, SE_MODE_BYTES = 3 };

/* Error codes (negative return values). */
enum se_error {
    SE_OK = 0,
    SE_ERR_ARG = -1,       /* bad argument: dtype, shape, mode, error bound */
    SE_ERR_TRUNCATED = -2, /* the blob ends early */
    SE_ERR_MAGIC = -3,     /* not a stemedge chunk */
    SE_ERR_VERSION = -4,   /* a newer format version */
    SE_ERR_CORRUPT = -5,   /* inconsistent header, model or stream */
    SE_ERR_CHECKSUM = -6,  /* a checksum does not match */
    SE_ERR_SPACE = -7,     /* the output buffer is too small */
    SE_ERR_NOMEM = -8,     /* allocation failed */
    SE_ERR_LOSSY = -9      /* lossy options on a dtype or mode that cannot honour them */
};

#define SE_MAX_DIMS 8

typedef struct se_params {
    int dtype;                 /* enum se_dtype */
    int ndim;                  /* 0 .. SE_MAX_DIMS */
    uint64_t shape[SE_MAX_DIMS];
    int mode;                  /* enum se_mode */
    double max_abs_error;      /* 0: lossless; > 0: |x - decoded| <= max_abs_error everywhere */
    uint64_t threshold;        /* counted data: values < threshold decode as 0 (0: off) */
} se_params;

typedef struct se_info {
    int dtype, ndim, mode, version;
    uint64_t shape[SE_MAX_DIMS];
    uint64_t raw_nbytes;       /* decoded size */
    uint64_t chunk_nbytes;     /* size of this chunk in the blob */
    double max_abs_error;
    uint64_t threshold;
} se_info;

/* Upper bound of the compressed size of `raw_nbytes` of data (stored-raw fallback included). */
size_t se_compress_bound(uint64_t raw_nbytes);

/* Compress `src` (C-contiguous, native byte order, shape and dtype in `p`) into dst. Returns the
 * number of bytes written, or a negative se_error. */
int64_t se_compress(const void* src, const se_params* p, void* dst, size_t dst_capacity);

/* Header of a chunk (validated and checksummed; model and payload not decoded). */
int se_info_get(const void* blob, size_t blob_nbytes, se_info* out);

/* The same without the chunk checksum (the header's own consistency is still checked): for a
 * caller that decodes into a buffer it already has, where se_decompress verifies everything. */
int se_info_peek(const void* blob, size_t blob_nbytes, se_info* out);

/* Decode one chunk into dst (exactly info.raw_nbytes bytes). Returns the bytes written or a
 * negative se_error; on error dst may hold partial data. */
int64_t se_decompress(const void* blob, size_t blob_nbytes, void* dst, size_t dst_capacity);

/* Use (1, the default) or bypass (0) the AVX-512 coder and checksum paths where the CPU has them;
 * the output is the same either way (the switch exists for tests and speed comparisons). */
void se_set_simd(int enabled);

/* CRC-32C (Castagnoli) of a buffer: the checksum the chunks carry. */
uint32_t se_crc32c(const void* data, size_t nbytes);

/* A short English description of an error code. */
const char* se_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* STEMEDGE_CODEC_H */
