/*
 * fuzz_text.c - libFuzzer target for the two text parsers: the dataset
 * item syntax (dataset_item_parse, src/data/dataset_opts.c) and list files
 * (image_list_parse, src/data/image_folder.c).
 */
#include <stdlib.h>
#include <string.h>

#include "base/check.h"
#include "data/image_folder.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = xmalloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    DatasetItem *item = xmalloc(sizeof *item);
    Err err;
    dataset_item_parse(item, s, NULL, &err);
    free(item);
    ImageSource *src = xcalloc(1, sizeof *src);
    src->fd = -1;
    src->za.fd = -1;
    if (image_list_parse(src, s, size, "/base", "fuzz.txt", &err) == AE_OK) {
        char name[64];
        for (int64_t i = 0; i < src->n; i++) image_source_name(src, i, name, sizeof name);
    }
    image_source_close(src);
    free(s);
    return 0;
}
