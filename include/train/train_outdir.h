/*
 * train_outdir.h - the output folder of aesim-train, and the rule that a run
 * never touches another run's files.
 *
 * A run's files in its folder OUT are its checkpoints (ckpt-stepN.npz,
 * checkpoint.npz: ckpt.h), metrics.csv and recon_epochNNN.png.  The folder is:
 *   --out DIR                 DIR;
 *   --resume ARG, no --out    the folder of the resumed run: ARG itself when
 *                             it is a folder, else the folder holding ARG, so
 *                             that the resumed run continues there (new
 *                             checkpoints beside the old, rows appended to its
 *                             metrics.csv);
 *   neither                   TRAIN_OUT_DEFAULT.
 * OUT may already hold run files only when it is the resumed run's folder
 * (same device and inode).  Otherwise (a fresh run, or a resume into another
 * --out) the run is refused with a message naming the folder and the way
 * out (--resume it, another --out, or --overwrite), unless --overwrite is
 * given: then the run files found in OUT are deleted first (and counted in a
 * note).  A resume into another folder starts that folder's metrics.csv
 * with a copy of the resumed run's, so the curve stays whole.
 * One job per folder: rank 0 holds an exclusive flock(2) on
 * OUT/TRAIN_LOCK_NAME from train_outdir_commit until train_outdir_release
 * (or the process's end: the kernel drops it, even after SIGKILL), so a
 * second job on the same folder, started at the same time or later, is
 * refused instead of mixing its checkpoints with the first's.
 * Collective: rank 0 looks at the disk and decides; every rank gets the
 * folder (other nodes may not see the resumed path).  MPI through par.h.
 */
#ifndef AESIM_TRAIN_OUTDIR_H
#define AESIM_TRAIN_OUTDIR_H

#include "base/err.h"
#include "par/par.h"
#include "train/train_args.h"

/* The output folder when neither --out nor --resume is given. */
#define TRAIN_OUT_DEFAULT "runs/aesim"
/* The metrics file of a run folder (metrics.h). */
#define TRAIN_METRICS_NAME "metrics.csv"
/* Reconstruction grids: TRAIN_RECON_PREFIX + epoch (3 digits) + ".png". */
#define TRAIN_RECON_PREFIX "recon_epoch"
/* The lock file of a run folder (holds "aesim-train, pid PID on HOST" of its holder: fileio_lock_dir). */
#define TRAIN_LOCK_NAME ".aesim-train.lock"

/* Sets cfg->out as above on every rank and checks the rule above; changes
 * nothing on disk (call it first, so that a refused run leaves nothing).
 * Errors (agreed): AE_EARG for a folder holding another run without
 * --overwrite (the message names one of its files and the ways out), AE_EIO
 * for a folder that cannot be listed. */
int train_outdir_prepare(const ParCtx *ctx, TrainConfig *cfg, Err *err);

/* Once every other check has passed, just before training: creates the
 * folder, locks it (*lock_fd: the lock's descriptor on rank 0, -1
 * elsewhere and on error), checks again that no other run's files appeared
 * since train_outdir_prepare, on --overwrite deletes the other run's files
 * (a note counts them), removes the checkpoint temps of killed writers
 * (ckpt_remove_stale_temps: under the lock no live writer has one; a note
 * counts them and their size), and for a resume into another folder copies
 * the resumed run's metrics.csv there.  Errors (agreed): AE_EIO naming the
 * folder or file; AE_EARG when another job holds the folder's lock (the
 * message gives its pid and host) or another run's files appeared. */
int train_outdir_commit(const ParCtx *ctx, TrainConfig *cfg, int *lock_fd, Err *err);

/* Drops the lock of train_outdir_commit (closes *lock_fd, sets it to -1);
 * no-op when *lock_fd < 0. */
void train_outdir_release(int *lock_fd);

#endif
