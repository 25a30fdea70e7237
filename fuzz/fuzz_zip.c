/*
 * fuzz_zip.c - libFuzzer target for the zip central-directory reader and
 * member streams (src/data/zip_read.c): open the archive, then inflate and
 * CRC-check every member (sizes are bounded by the reader's bomb check).
 */
#define _GNU_SOURCE
#include "fuzz_common.h"
#include "data/zip_read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = fuzz_memfd(data, size);
    if (fd < 0) return 0;
    ZipArchive za;
    Err err;
    if (zip_archive_open_fd(&za, fd, "fuzz.zip", &err) != AE_OK) return 0;
    for (int i = 0; i < za.n; i++) zip_member_verify(&za, &za.entries[i], &err);
    zip_archive_close(&za);
    return 0;
}
