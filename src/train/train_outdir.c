/*
 * train_outdir.c - choice and protection of aesim-train's output folder
 * (see include/train_outdir.h).  Rank 0 alone looks at and changes the disk;
 * the decision and its status are shared through par.h; rank 0 locks the
 * folder (flock(2) on TRAIN_LOCK_NAME) for the job's lifetime.  Does not
 * touch files other than a run's own names and the lock.  Single-threaded.
 */
#include "train/train_outdir.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/ckpt.h"
#include "base/fileio.h"

/* Bytes copied per read when copying metrics.csv. */
#define OUTDIR_COPY_CHUNK 65536

/* 1 if name starts with prefix and ends with ext. */
static int named(const char *name, const char *prefix, const char *ext)
{
    size_t n = strlen(name), p = strlen(prefix), e = strlen(ext);
    return n >= p + e && strncmp(name, prefix, p) == 0 && strcmp(name + n - e, ext) == 0;
}

/* 1 if `name` is a file a run writes into its folder (see the header). */
static int is_run_file(const char *name)
{
    if (strstr(name, ".tmp.")) return 0; /* a crashed writer's temporary (fileio.h): removed when the run takes the folder */
    if (strcmp(name, CKPT_LATEST_NAME) == 0 || strcmp(name, TRAIN_METRICS_NAME) == 0) return 1;
    return named(name, CKPT_STEP_PREFIX, ".npz") || named(name, TRAIN_RECON_PREFIX, ".png");
}

/* Counts (and with `remove`, deletes) the run files in dir; `first` gets
 * the name of one of them.  Returns the count (0 when dir does not exist),
 * -1 if dir cannot be listed; *removed counts deletions. */
static int scan_run_files(const char *dir, int remove, char *first, size_t cap, int *removed, Err *err)
{
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : -1;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL) {
        if (!is_run_file(e->d_name)) continue;
        if (n++ == 0 && first) snprintf(first, cap, "%s", e->d_name);
        if (!remove) continue;
        char path[FILEIO_PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        if (unlink(path) != 0) {
            err_set(err, AE_EIO, "--overwrite: cannot delete %s: %s", path, strerror(errno));
            break;
        }
        (*removed)++;
    }
    closedir(d);
    return n;
}

static int same_folder(const char *a, const char *b)
{
    struct stat x, y;
    return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

/* Copies from/metrics.csv to to/metrics.csv atomically (nothing to do when
 * the source does not exist). */
static int copy_metrics(const char *from, const char *to, Err *err)
{
    char src[FILEIO_PATH_MAX], dst[FILEIO_PATH_MAX];
    if (snprintf(src, sizeof src, "%s/%s", from, TRAIN_METRICS_NAME) >= (int)sizeof src ||
        snprintf(dst, sizeof dst, "%s/%s", to, TRAIN_METRICS_NAME) >= (int)sizeof dst)
        return err_set(err, AE_EARG, "%s: path too long", to);
    FILE *in = fopen(src, "rb");
    if (!in) return errno == ENOENT ? AE_OK : err_set(err, AE_EIO, "cannot read %s: %s", src, strerror(errno));
    AtomicFile af;
    if (atomic_open(&af, dst, err)) {
        fclose(in);
        return err->code;
    }
    char buf[OUTDIR_COPY_CHUNK];
    size_t got;
    int rc = AE_OK;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, got, af.f) != got) {
            rc = err_set(err, AE_EIO, "cannot write %s: %s", af.tmp_path, strerror(errno));
            break;
        }
    if (rc == AE_OK && ferror(in)) rc = err_set(err, AE_EIO, "cannot read %s: %s", src, strerror(errno));
    fclose(in);
    if (rc) {
        atomic_abort(&af);
        return rc;
    }
    return atomic_commit(&af, err);
}

/* Rank 0: the resumed run's folder into from[FILEIO_PATH_MAX] ("" for a
 * fresh run), cfg->out chosen; returns 1 if cfg->out is that folder. */
static int choose(TrainConfig *cfg, char *from)
{
    from[0] = '\0';
    if (cfg->resume[0]) {
        ckpt_resume_folder(from, FILEIO_PATH_MAX, cfg->resume);
        if (!(cfg->given & TRAIN_GIVEN_OUT)) snprintf(cfg->out, sizeof cfg->out, "%s", from);
    }
    return from[0] && same_folder(from, cfg->out);
}

/* Completes fileio_lock_dir's "OUT is in use by ..." message. */
static int busy_hint(Err *err)
{
    size_t len = strlen(err->msg);
    snprintf(err->msg + len, sizeof err->msg - len, ": two jobs writing one folder would mix their checkpoints and "
             "metrics.csv (hint: wait for it to end, or choose another --out)");
    return err->code;
}

/* The rule of the header for a folder that is not the resumed run's own
 * (from: the resumed run's folder or ""): no other run's files unless
 * --overwrite. */
static int check_files(const TrainConfig *cfg, const char *from, Err *err)
{
    char first[256] = "";
    int removed = 0;
    int n = scan_run_files(cfg->out, 0, first, sizeof first, &removed, err);
    if (n < 0) return err_set(err, AE_EIO, "cannot list the output folder %s: %s", cfg->out, strerror(errno));
    if (n == 0 || cfg->overwrite) return AE_OK;
    if (cfg->resume[0])
        return err_set(err, AE_EARG, "--out %s holds another run (%s and %d more of its files); a resume writes "
                       "into the folder it resumes from (%s) unless --out names a fresh one: drop --out, choose "
                       "another, or add --overwrite to delete that run's files first", cfg->out, first, n - 1, from);
    return err_set(err, AE_EARG, "%s holds another run (%s and %d more of its files): continue it with --resume %s, "
                   "choose another --out, or add --overwrite to delete its checkpoints, metrics.csv and "
                   "recon_epoch*.png first", cfg->out, first, n - 1, cfg->out);
}

/* Rank 0's part of train_outdir_prepare: choose and check, change nothing. */
static int check_rank0(TrainConfig *cfg, Err *err)
{
    char from[FILEIO_PATH_MAX];
    const int own = choose(cfg, from);
    if (fileio_dir_busy(cfg->out, TRAIN_LOCK_NAME, err)) return busy_hint(err);
    return own ? AE_OK : check_files(cfg, from, err);
}

int train_outdir_prepare(const ParCtx *ctx, TrainConfig *cfg, Err *err)
{
    if (ctx->rank == 0) check_rank0(cfg, err);
    par_bcast(ctx, cfg->out, sizeof cfg->out, 0);
    return par_agree(ctx, err);
}

void train_outdir_release(int *lock_fd)
{
    fileio_unlock_dir(lock_fd);
}

/* Rank 0's part of train_outdir_commit. */
static int commit_rank0(TrainConfig *cfg, int *lock_fd, Err *err)
{
    char from[FILEIO_PATH_MAX];
    const int own = choose(cfg, from);
    if (fileio_mkdirs(cfg->out, err)) return err->code;
    if (fileio_lock_dir(cfg->out, TRAIN_LOCK_NAME, "aesim-train", lock_fd, err))
        return err->code == AE_EARG ? busy_hint(err) : err->code;
    /* Under the lock, again: a run that wrote here after our first look
     * (and has ended, or it would hold the lock) is not ours to join. */
    if (!own && check_files(cfg, from, err)) return err->code;
    if (!own && cfg->overwrite) {
        int removed = 0;
        scan_run_files(cfg->out, 1, NULL, 0, &removed, err);
        if (err->code) return err->code;
        if (removed) {
            printf("--overwrite: deleted %d file(s) of the previous run in %s\n", removed, cfg->out);
            fflush(stdout);
        }
    }
    /* Under the lock a dead writer's temp of the run's files is garbage,
     * and its room may be what this run's first save needs. */
    int64_t bytes;
    const int temps = fileio_remove_dead_temps(cfg->out, is_run_file, &bytes);
    if (temps) {
        printf("note: removed %d temporary file(s) (%.1f MB) left in %s by a writer that was killed\n",
               temps, bytes / 1e6, cfg->out);
        fflush(stdout);
    }
    if (from[0] && !own) return copy_metrics(from, cfg->out, err);
    return AE_OK;
}

int train_outdir_commit(const ParCtx *ctx, TrainConfig *cfg, int *lock_fd, Err *err)
{
    *lock_fd = -1;
    if (ctx->rank == 0 && commit_rank0(cfg, lock_fd, err)) train_outdir_release(lock_fd);
    return par_agree(ctx, err);
}
