/*
 * version.c - the --version text of every aesim program (see
 * include/version.h).  Queries the CPU through the kernels' own "supported"
 * functions, so it reports what the programs will run, not what the CPU has.
 * Does not: start MPI or query the MPI library (it runs before MPI_Init).
 * Single-threaded.
 */
#include "tools/version.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "build_info.h"
#include "nn/conv2d.h"
#include "nn/conv_amx.h"
#include "nn/conv_direct_bf16.h"
#include "nn/gemm_avx512.h"
#include "search/knn_scan.h"
#include "search/search_core.h"

/* Declared by OpenBLAS (cblas.h of Debian's libopenblas-dev); repeated in
 * case a cblas.h from another BLAS is picked up (threads.c does the same). */
char *openblas_get_corename(void);
char *openblas_get_config(void);

/* The kernel size of every preset (3x3): the one the kernel choice reports. */
#define VERSION_PRESET_K 3

int version_requested(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--version") == 0) return 1;
    return 0;
}

/* 1 when started by mpirun/srun as a rank other than 0. */
static int not_rank0(void)
{
    const char *vars[] = { "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK" };
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v && strcmp(v, "0") != 0) return 1;
    }
    return 0;
}

int version_print(FILE *out, const char *tool)
{
    if (not_rank0()) return 0;
    /* The programs always run the automatic choice; AESIM_KERNEL is read by
     * the benchmarks (bench/bench_train.c) and test tools only, so a value
     * set here is reported as ignored, not as the kernel in use. */
    const char *env = getenv(CONV2D_KERNEL_ENV);
    ConvKernel asked = CONV_KERNEL_AUTO;
    Err err;
    err_clear(&err);
    char note[160] = "";
    if (env && *env)
        snprintf(note, sizeof note, " (%s=%.64s ignored: only the benchmarks read it%s)", CONV2D_KERNEL_ENV, env,
                 conv2d_kernel_parse(&asked, env, &err) != AE_OK ? ", and refuse that name" : "");
    fprintf(out, "%s %s\n", tool, AESIM_VERSION);
    fprintf(out, "build: %s\n", AESIM_BUILD_INFO);
    fprintf(out, "kernels on this CPU: conv %s%s, GEMM %s, kNN scan %s; OpenBLAS %s (%s)\n",
            conv2d_kernel_name(conv2d_kernel_resolve(CONV_KERNEL_AUTO, VERSION_PRESET_K)), note,
            gemm_avx512_supported() ? "aesim AVX-512 + OpenBLAS" : "OpenBLAS",
            knn_scan_avx512_supported() ? "AVX-512" : "portable", openblas_get_corename(), openblas_get_config());
    /* What --precision auto resolves to on one node (train_setup.c and
     * search_core.c ask every rank; a job on mixed CPUs may get fp32), for
     * the two programs that take --precision. */
    const int native = conv_bf16_available(CONV_BF16_NATIVE);
    const int train = strcmp(tool, "aesim-train") == 0;
    char rate[160] = "";
    if (native)
        snprintf(rate, sizeof rate, " at %.2fx the multiply-adds per second of float32 FMAs, measured (auto needs "
                 "%.1fx)", conv_bf16_dot_speedup(), CONV_BF16_AUTO_MIN_SPEEDUP);
    /* aesim-search only encodes (forward): AMX tiles run that where present */
    const int amx = !train && conv_amx_available(CONV_AMX_NATIVE);
    if (train || strcmp(tool, "aesim-search") == 0)
        fprintf(out, "bf16: %s%s%s; --precision auto%s runs %s here%s\n",
                native ? "VDPBF16PS kernels (AVX512_BF16)"
                       : "emulated, float32 kernels on bf16-rounded operands (this CPU lacks AVX512_BF16)",
                rate, amx ? "; encoding on AMX tiles (AMX-BF16)" : "", train ? " (the default)" : "",
                train ? (conv_bf16_auto_runs_bf16() ? "bf16" : "fp32") : (search_auto_runs_bf16() ? "bf16" : "fp32"),
                train ? "" : " (the default is fp32)");
    return fflush(out) != 0 || ferror(out) ? 1 : 0;
}
