/*
 * tool_image_decode.c - test helper for tests/test_image_sources.py (not a
 * test).
 *
 *   tool_image_decode OUTDIR FILE...
 *       image_decode_file() of every FILE; for each prints one line
 *         "ok NAME W H CHANNELS"   and writes OUTDIR/NAME.raw ([H][W][CHANNELS] uint8)
 *         "err NAME CODE MESSAGE"  when it is refused
 *       where NAME is the FILE's last path component.  Exit 0 unless the
 *       arguments are wrong (USAGE_EXIT).
 */
#include <stdio.h>
#include <string.h>

#include "data/image_decode.h"

#define USAGE_EXIT 64
#define PATH_BYTES 4096
/* Same limit as the dataset default. */
#define MAX_PIXELS (1LL << 26)

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s OUTDIR FILE...\n", argv[0]);
        return USAGE_EXIT;
    }
    for (int i = 2; i < argc; i++) {
        const char *slash = strrchr(argv[i], '/');
        const char *name = slash ? slash + 1 : argv[i];
        Err err;
        err_clear(&err);
        DecodedImage im;
        if (image_decode_file(&im, argv[i], MAX_PIXELS, &err)) {
            printf("err %s %d %s\n", name, err.code, err.msg);
            continue;
        }
        char out[PATH_BYTES];
        snprintf(out, sizeof out, "%s/%s.raw", argv[1], name);
        FILE *f = fopen(out, "wb");
        size_t bytes = (size_t)im.w * im.h * im.channels;
        if (!f || fwrite(im.px, 1, bytes, f) != bytes || fclose(f) != 0) {
            perror(out);
            return 1;
        }
        printf("ok %s %d %d %d\n", name, im.w, im.h, im.channels);
        image_free(&im);
    }
    return 0;
}
