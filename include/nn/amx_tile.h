/*
 * amx_tile.h - the AMX tile configuration block and its load, shared by
 * the AMX kernels (conv_amx.c) and the AMX spike (bench/bench_amx_conv.c).
 *
 * The 64-byte block of LDTILECFG (Intel SDM Vol. 2, "LDTILECFG - Load Tile
 * Configuration"): palette 1 gives 8 tiles of at most 16 rows x 64 bytes;
 * tile t has rows[t] rows of colsb[t] bytes; unused tiles must be 0 rows,
 * 0 bytes, and the reserved bytes 0 (else #GP).
 * amx_tile_loadconfig is LDTILECFG with the whole block as its memory
 * operand: GCC 12's _tile_loadconfig declares only 8 bytes
 * ("m" (*(const void **)cfg)), so the optimiser drops the stores of the
 * rest and LDTILECFG faults (#GP, SIGSEGV) on stale stack bytes.
 * Only on x86-64 GCC (the only builds with AMX kernels); the caller must
 * hold the tile permission (conv_amx_available(CONV_AMX_NATIVE)).
 */
#ifndef AESIM_AMX_TILE_H
#define AESIM_AMX_TILE_H

#include <stdint.h>

typedef struct AmxTileCfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} AmxTileCfg;

#if defined(__x86_64__) && defined(__GNUC__)
/* LDTILECFG *cfg: configures the calling thread's tiles. */
static inline void amx_tile_loadconfig(const AmxTileCfg *cfg)
{
    __asm__ volatile("ldtilecfg %0" ::"m"(*cfg));
}
#endif

#endif
