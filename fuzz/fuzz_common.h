/*
 * fuzz_common.h - helpers shared by the libFuzzer targets in fuzz/: put the
 * input in an anonymous in-memory file (memfd) so that parsers that take a
 * path or a descriptor see exactly the fuzzer's bytes.  Linux only; not
 * part of the library.
 */
#ifndef AESIM_FUZZ_COMMON_H
#define AESIM_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* A memfd holding data[size] (rewound), or -1. */
static inline int fuzz_memfd(const uint8_t *data, size_t size)
{
    int fd = memfd_create("aesim-fuzz", MFD_CLOEXEC);
    if (fd < 0) return -1;
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)w;
    }
    lseek(fd, 0, SEEK_SET);
    return fd;
}

#endif
