/*
 * fuzz_dataset.c - libFuzzer target for whole array sources: the input is
 * opened as an npz (including sample stores), npy, IDX, CIFAR-10 and
 * CIFAR-100 file through dataset_open (src/data/image_source.c, cifar.c, idx.c,
 * zip_read.c, npy.c), and every image that loads is read back.  The first
 * input byte picks resizing options so conversion paths run too.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>

#include "base/check.h"
#include "data/dataset.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const char *const kinds[] = {"npz", "npy", "idx", "cifar10", "cifar100"};
    static const char *const opts[] = {"", "?size=5x3&channels=1&fit=squash", "?layout=nhwc&range=255&map=0",
                                       "?channels=3&size=2"};
    int fd = fuzz_memfd(data + 1, size - 1);
    if (fd < 0) return 0;
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        char spec[128];
        snprintf(spec, sizeof spec, "%s:/proc/self/fd/%d%s", kinds[k], fd, opts[data[0] % 4]);
        Dataset ds;
        Err err;
        if (dataset_open(&ds, spec, &err) != AE_OK) continue;
        uint8_t *img = xmalloc((size_t)dataset_image_bytes(&ds));
        for (int64_t i = 0; i < ds.n && i < 64; i++) dataset_get_u8(img, &ds, i);
        free(img);
        dataset_free(&ds);
    }
    close(fd);
    return 0;
}
