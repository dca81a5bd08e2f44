/* HDF5 filter plugin for the stemedge frame codec (libh5stemedge.so).
 *
 * Built without HDF5 headers or libraries: the few HDF5 types a filter plugin needs are declared
 * below, matching the ABI of HDF5 1.10 to 2.x (H5Zdevelop.h / H5Zpublic.h, H5PLextern.h). The
 * plugin calls no HDF5 function, so the same file loads into any HDF5 of those versions: h5py's
 * (via h5py.h5z.register_filter, see stemedge.codec.hdf5.register) or any other (via
 * HDF5_PLUGIN_PATH pointing at the folder that holds this file: h5dump, h5py without stemedge,
 * C/Fortran programs).
 *
 * Filter id 421 lies in HDF5's range 256-511, set aside for filters under test or in private use;
 * it is NOT registered with The HDF Group, so another private filter may use the same number.
 *
 * Client data (cd_values, all uint32), format 1:
 *   [0] 1 (format of this list)         [1] dtype (enum se_dtype)   [2] mode (enum se_mode)
 *   [3] ndim (1 .. SE_MAX_DIMS)         [4 .. 4+ndim) the chunk shape
 *   [4+ndim], [5+ndim]  max_abs_error: IEEE-754 double, low then high 32 bits
 *   [6+ndim], [7+ndim]  threshold (uint64), low then high 32 bits
 * Decoding needs none of it (every chunk is a self-describing stemedge chunk) but checks that the
 * chunk decodes to the size the chunk shape gives.
 *
 * Buffers are the C allocator's (malloc/free), as HDF5 release builds give and take them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "stemedge/codec.h"

/* ---- HDF5 ABI (the subset a filter plugin sees) ------------------------------------------- */
typedef int64_t hid_t;  /* 64-bit since HDF5 1.10 */
typedef int htri_t;
typedef int herr_t;
typedef int H5Z_filter_t;

typedef htri_t (*H5Z_can_apply_func_t)(hid_t dcpl_id, hid_t type_id, hid_t space_id);
typedef herr_t (*H5Z_set_local_func_t)(hid_t dcpl_id, hid_t type_id, hid_t space_id);
typedef size_t (*H5Z_func_t)(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[],
                             size_t nbytes, size_t* buf_size, void** buf);

typedef struct H5Z_class2_t {
    int version;              /* H5Z_CLASS_T_VERS */
    H5Z_filter_t id;
    unsigned encoder_present;
    unsigned decoder_present;
    const char* name;
    H5Z_can_apply_func_t can_apply;
    H5Z_set_local_func_t set_local;
    H5Z_func_t filter;
} H5Z_class2_t;

typedef enum H5PL_type_t {
    H5PL_TYPE_ERROR = -1,
    H5PL_TYPE_FILTER = 0,
    H5PL_TYPE_VOL = 1,
    H5PL_TYPE_VFD = 2,
    H5PL_TYPE_NONE = 3
} H5PL_type_t;

#define H5Z_CLASS_T_VERS 1
#define H5Z_FLAG_REVERSE 0x0100u

/* ---- the filter ------------------------------------------------------------------------- */
#define STEMEDGE_H5_FILTER_ID 421
#define STEMEDGE_H5_CD_FORMAT 1u
#define STEMEDGE_H5_CD_FIXED 8u /* cd_values besides the chunk shape */

#if defined(__GNUC__)
#define SE_H5_EXPORT __attribute__((visibility("default")))
#else
#define SE_H5_EXPORT
#endif

static size_t dtype_size(unsigned int dtype) {
    switch (dtype) {
        case SE_U8: case SE_I8: case SE_BOOL: return 1;
        case SE_U16: case SE_I16: return 2;
        case SE_U32: case SE_I32: case SE_F32: return 4;
        case SE_U64: case SE_I64: case SE_F64: return 8;
        default: return 0;
    }
}

/* cd_values -> codec parameters and the chunk's size in bytes; 0 when they are not a
 * format-1 list. */
static int params_from_cd(size_t n, const unsigned int cd[], se_params* p, uint64_t* chunk_nbytes) {
    memset(p, 0, sizeof *p);
    if (cd == NULL || n < STEMEDGE_H5_CD_FIXED || cd[0] != STEMEDGE_H5_CD_FORMAT) return 0;
    unsigned int ndim = cd[3];
    if (ndim < 1 || ndim > SE_MAX_DIMS || n != STEMEDGE_H5_CD_FIXED + ndim) return 0;
    size_t item = dtype_size(cd[1]);
    if (item == 0 || cd[2] > (unsigned int)SE_MODE_BYTES) return 0;
    uint64_t total = item;
    for (unsigned int i = 0; i < ndim; ++i) {
        uint64_t d = cd[4 + i];
        if (d == 0 || total > UINT64_MAX / d) return 0;
        total *= d;
        p->shape[i] = d;
    }
    *chunk_nbytes = total;
    uint64_t bits = (uint64_t)cd[4 + ndim] | ((uint64_t)cd[5 + ndim] << 32);
    memcpy(&p->max_abs_error, &bits, sizeof bits);
    p->threshold = (uint64_t)cd[6 + ndim] | ((uint64_t)cd[7 + ndim] << 32);
    p->dtype = (int)cd[1];
    p->mode = (int)cd[2];
    p->ndim = (int)ndim;
    return 1;
}

/* HDF5 takes the decoded chunk to be exactly its chunk size: a chunk claiming another size
 * (damaged, or from another dataset) is refused, so HDF5 never reads past the buffer. */
static size_t decode(size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                     size_t* buf_size, void** buf) {
    se_info info;
    if (se_info_get(*buf, nbytes, &info) != SE_OK) return 0;
    if (info.raw_nbytes == 0 || info.raw_nbytes > (uint64_t)SIZE_MAX) return 0;
    se_params p;
    uint64_t expected = 0;
    if (params_from_cd(cd_nelmts, cd_values, &p, &expected) && info.raw_nbytes != expected)
        return 0;
    size_t raw = (size_t)info.raw_nbytes;
    void* out = malloc(raw);
    if (out == NULL) return 0;
    int64_t got = se_decompress(*buf, nbytes, out, raw);
    if (got < 0 || (uint64_t)got != info.raw_nbytes) {
        free(out);
        return 0;
    }
    free(*buf);
    *buf = out;
    *buf_size = raw;
    return raw;
}

static size_t encode(size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                     size_t* buf_size, void** buf) {
    se_params p;
    uint64_t expected = 0;
    if (!params_from_cd(cd_nelmts, cd_values, &p, &expected)) return 0;
    if (expected != (uint64_t)nbytes) return 0; /* HDF5 always hands over whole chunks */
    size_t cap = se_compress_bound((uint64_t)nbytes);
    if (cap == 0) return 0;
    void* out = malloc(cap);
    if (out == NULL) return 0;
    int64_t n = se_compress(*buf, &p, out, cap);
    if (n <= 0) {
        free(out);
        return 0;
    }
    free(*buf);
    *buf = out;
    *buf_size = cap;
    return (size_t)n;
}

/* HDF5's filter callback: the new number of valid bytes in *buf, 0 on failure (HDF5 then fails
 * the read, or for an optional filter stores the chunk unfiltered). Never longjmps, never throws:
 * the codec's C API returns error codes. */
static size_t stemedge_h5_filter(unsigned int flags, size_t cd_nelmts,
                                 const unsigned int cd_values[], size_t nbytes, size_t* buf_size,
                                 void** buf) {
    if (buf == NULL || *buf == NULL || buf_size == NULL || nbytes == 0) return 0;
    if (flags & H5Z_FLAG_REVERSE) return decode(cd_nelmts, cd_values, nbytes, buf_size, buf);
    return encode(cd_nelmts, cd_values, nbytes, buf_size, buf);
}

static const H5Z_class2_t stemedge_h5_class = {
    H5Z_CLASS_T_VERS,
    STEMEDGE_H5_FILTER_ID,
    1, /* encoder present */
    1, /* decoder present */
    "stemedge frame codec (unregistered filter id 421)",
    NULL, /* can_apply: the Python side (filter_options) checks dtype and shape */
    NULL, /* set_local: cd_values are complete as given */
    stemedge_h5_filter,
};

SE_H5_EXPORT H5PL_type_t H5PLget_plugin_type(void) { return H5PL_TYPE_FILTER; }
SE_H5_EXPORT const void* H5PLget_plugin_info(void) { return &stemedge_h5_class; }
