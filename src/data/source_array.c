/*
 * source_array.c - the set-up every array reader (NumPy .npy / .npz members,
 * IDX, CIFAR batches) ends with: the target shape from the raw shape and the
 * options, and the memory map when the records can be used in place (see
 * include/data/source_array.h).  No MPI, no global state.
 */
#include "data/source_array.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "base/mapguard.h"
#include "data/npy.h"

/* Sets the target shape from the raw shape and the options, and decides
 * whether the records can be mapped.  Requires access/fd/offset/stride/
 * dtype/C0/H0/W0/nhwc to be set. */
int source_array_finish_shape(ImageSource *s, const char *what, Err *err)
{
    const DatasetOptions *o = &s->opts;
    s->C = o->C ? o->C : s->C0;
    s->H = o->H ? o->H : s->H0;
    s->W = o->W ? o->W : s->W0;
    int identity = s->C == s->C0 && s->H == s->H0 && s->W == s->W0;
    s->n_resized = s->H != s->H0 || s->W != s->W0 ? s->n : 0;
    uint64_t rec = (uint64_t)s->C0 * s->H0 * s->W0;
    int mappable = s->access == RAW_FILE && s->dtype == NPY_U8 && s->skip == 0 && s->stride == rec &&
                   (!s->nhwc || s->C0 == 1) && identity;
    if (o->map == 1 && !mappable)
        return err_set(err, AE_EARG, "%s cannot be memory-mapped as %dx%dx%d uint8 NCHW (it is %s%s %s, %dx%dx%d%s) "
                       "(hint: drop map=1, or pack it with aesim-pack first)", what, s->C, s->H, s->W,
                       s->big_endian ? ">" : "", npy_dtype_descr(s->dtype),
                       s->access == RAW_FILE ? (s->nhwc ? "NHWC" : "NCHW") : "compressed/streamed", s->C0, s->H0,
                       s->W0, s->skip ? " with interleaved labels" : "");
    if (mappable && o->map != 0 && s->n > 0) {
        struct stat st;
        if (fstat(s->fd, &st) != 0)
            return err_set(err, AE_EIO, "%s: cannot stat: %s", what, strerror(errno));
        void *addr = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, s->fd, 0);
        if (addr == MAP_FAILED)
            return err_set(err, AE_EIO, "%s: cannot memory-map: %s (hint: use map=0 to read it into memory)", what,
                           strerror(errno));
        s->map_addr = addr;
        s->map_len = (size_t)st.st_size;
        mapguard_register(addr, s->map_len, s->path); /* a clear end if the file shrinks under us */
        /* Shuffled batches touch a few pages here and there: readahead
         * would read whole windows around each (dataset_prefetch names the
         * pages a step needs instead). */
        if (o->random_access) madvise(addr, (size_t)st.st_size, MADV_RANDOM);
        s->mapped = (const uint8_t *)addr + s->offset;
    }
    return AE_OK;
}
