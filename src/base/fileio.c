/*
 * fileio.c - atomic file replacement (see include/base/fileio.h).
 * Follows the write-temp / fsync / rename / fsync-directory pattern that
 * POSIX rename(2) makes atomic.  No MPI; callers decide which rank writes.
 */
#include "base/fileio.h"

#include "base/check.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int atomic_open(AtomicFile *af, const char *path, Err *err)
{
    af->f = NULL;
    if (strlen(path) + 32 >= FILEIO_PATH_MAX)
        return err_set(err, AE_EARG, "%s: path too long", path);
    snprintf(af->path, sizeof af->path, "%s", path);
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return err_set(err, AE_EIO, "%s exists and is not a regular file (a folder, device or pipe): refusing to "
                       "replace it (hint: name a new file)", path);
    snprintf(af->tmp_path, sizeof af->tmp_path, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp_path, "wb");
    if (!af->f)
        return err_set(err, AE_EIO, "cannot write %s: %s (is the output folder there and writable?)",
                       af->tmp_path, strerror(errno));
    return AE_OK;
}

static int fsync_dir_of(const char *path)
{
    char buf[FILEIO_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* "DIR is in use by WHO" from the lock file fd (its holder line). */
static int busy_error(int fd, const char *dir, Err *err)
{
    char holder[160] = "";
    ssize_t k = pread(fd, holder, sizeof holder - 1, 0);
    holder[k > 0 ? k : 0] = '\0';
    holder[strcspn(holder, "\n")] = '\0';
    return err_set(err, AE_EARG, "%s is in use by %s", dir, holder[0] ? holder : "another process");
}

int fileio_dir_busy(const char *dir, const char *name, Err *err)
{
    char path[FILEIO_PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    int busy = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    if (busy) busy_error(fd, dir, err);
    close(fd); /* drops the shared lock if it was granted */
    return busy;
}

int fileio_lock_dir(const char *dir, const char *name, const char *holder, int *fd, Err *err)
{
    char path[FILEIO_PATH_MAX];
    *fd = -1;
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return err_set(err, AE_EARG, "%s: path too long", dir);
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f < 0)
        return err_set(err, AE_EIO, "cannot create the lock file %s: %s (hint: is the folder writable?)", path,
                       strerror(errno));
    if (flock(f, LOCK_EX | LOCK_NB) != 0) {
        const int e = errno;
        if (e == EWOULDBLOCK) busy_error(f, dir, err); /* reads the holder from f */
        close(f);
        if (e == EWOULDBLOCK) return err->code;
        /* A file system without flock (Lustre mounted noflock: ENOSYS;
         * some NFS setups: ENOLCK) must not stop the job: no lock then. */
        if (e == ENOSYS || e == ENOLCK || e == EOPNOTSUPP || e == ENOTSUP) return AE_OK;
        return err_set(err, AE_EIO, "cannot lock %s: %s", path, strerror(e));
    }
    char host[64] = "?", me[256];
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    int n = snprintf(me, sizeof me, "%s, pid %ld on %s\n", holder, (long)getpid(), host);
    if (n >= (int)sizeof me) n = (int)sizeof me - 1;
    /* The holder line is informative only (for busy_error): a failed write
     * leaves the lock held all the same. */
    const int named = ftruncate(f, 0) == 0 && pwrite(f, me, (size_t)n, 0) == n;
    (void)named;
    *fd = f;
    return AE_OK;
}

void fileio_unlock_dir(int *fd)
{
    if (*fd < 0) return;
    close(*fd);
    *fd = -1;
}

int fileio_rename_noreplace(const char *from, const char *to)
{
    if (link(from, to) == 0) return unlink(from) == 0 || errno == ENOENT ? 0 : -1;
    if (errno != EPERM && errno != ENOTSUP && errno != EOPNOTSUPP && errno != EMLINK) return -1;
    struct stat st;
    if (lstat(to, &st) == 0) {
        errno = EEXIST;
        return -1;
    }
    return rename(from, to);
}

int atomic_commit_closed(AtomicFile *af, Err *err)
{
    int fd = open(af->tmp_path, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        unlink(af->tmp_path);
        return err_set(err, AE_EIO, "cannot sync %s: %s", af->tmp_path, strerror(e));
    }
    close(fd);
    if (rename(af->tmp_path, af->path) != 0) {
        int e = errno;
        unlink(af->tmp_path);
        return err_set(err, AE_EIO, "cannot rename %s to %s: %s", af->tmp_path, af->path, strerror(e));
    }
    fsync_dir_of(af->path); /* best effort: some file systems refuse fsync on folders */
    return AE_OK;
}

int atomic_commit(AtomicFile *af, Err *err)
{
    if (af->f) {
        int bad = fflush(af->f) != 0 || ferror(af->f);
        int e = errno;
        if (!bad && fsync(fileno(af->f)) != 0) { bad = 1; e = errno; }
        if (fclose(af->f) != 0 && !bad) { bad = 1; e = errno; }
        af->f = NULL;
        if (bad) {
            unlink(af->tmp_path);
            return err_set(err, AE_EIO, "cannot write %s: %s (disk full or folder not writable?)",
                           af->path, strerror(e ? e : EIO));
        }
    }
    return atomic_commit_closed(af, err);
}

long fileio_temp_name_parse(const char *name, char *final, size_t cap)
{
    /* the last ".tmp." of the name, then digits, then nothing or "." and 6 alphanumerics */
    const char *t = NULL;
    for (const char *p = strstr(name, ".tmp."); p; p = strstr(p + 1, ".tmp.")) t = p;
    if (!t || t == name) return 0;
    const char *d = t + 5, *digits = d;
    long pid = 0;
    while (*d >= '0' && *d <= '9' && pid < 100000000L) pid = pid * 10 + (*d++ - '0');
    if (d == digits || pid <= 0 || (*d >= '0' && *d <= '9')) return 0;
    if (*d) {
        if (*d != '.' || strlen(d + 1) != 6) return 0;
        for (const char *c = d + 1; *c; c++)
            if (!isalnum((unsigned char)*c)) return 0;
    }
    if (cap) snprintf(final, cap, "%.*s", (int)(t - name), name);
    return pid;
}

int fileio_remove_dead_temps(const char *dir, int (*own)(const char *final), int64_t *bytes)
{
    if (bytes) *bytes = 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    char final[NAME_MAX + 1], path[FILEIO_PATH_MAX];
    while ((e = readdir(d)) != NULL) {
        const long pid = fileio_temp_name_parse(e->d_name, final, sizeof final);
        if (!pid || !own(final) || (kill((pid_t)pid, 0) == 0 || errno != ESRCH) ||
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (unlink(path) == 0) {
            removed++;
            if (bytes) *bytes += (int64_t)st.st_size;
        }
    }
    closedir(d);
    return removed;
}

void atomic_abort(AtomicFile *af)
{
    if (af->f) fclose(af->f);
    af->f = NULL;
    unlink(af->tmp_path);
}

int fileio_pread_full(int fd, void *buf, uint64_t n, uint64_t off)
{
    uint8_t *b = buf;
    for (uint64_t done = 0; done < n;) {
        if (off + done > (uint64_t)INT64_MAX) {
            errno = 0;
            return -1;
        }
        ssize_t got = pread(fd, b + done, (size_t)(n - done), (off_t)(off + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            if (got == 0) errno = 0;
            return -1;
        }
        done += (uint64_t)got;
    }
    return 0;
}

int fileio_pwrite_full(int fd, const void *buf, uint64_t n, uint64_t off)
{
    const uint8_t *b = buf;
    for (uint64_t done = 0; done < n;) {
        if (off + done > (uint64_t)INT64_MAX) {
            errno = 0;
            return -1;
        }
        ssize_t w = pwrite(fd, b + done, (size_t)(n - done), (off_t)(off + done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        done += (uint64_t)w;
    }
    return 0;
}

int fileio_check_input(const char *path, Err *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(err, AE_EIO, "cannot open %s: %s (hint: check the path)", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return err_set(err, AE_EIO, "%s is not a regular file (%s): give the path of a file", path,
                       S_ISDIR(st.st_mode) ? "a folder" : S_ISFIFO(st.st_mode) ? "a pipe" : "a device or socket");
    return AE_OK;
}

int fileio_check_output(const char *path, const char *option, int overwrite, Err *err)
{
    struct stat st;
    if (stat(path, &st) != 0) return AE_OK; /* missing (or unreachable: atomic_open names the reason) */
    if (!S_ISREG(st.st_mode))
        return err_set(err, AE_EIO, "%s exists and is not a regular file: refusing to replace it (hint: name a new "
                       "file)", path);
    if (!overwrite)
        return err_set(err, AE_EIO, "%s already exists: refusing to replace it (hint: choose another %s, or add "
                       "--overwrite to replace it)", path, option);
    return AE_OK;
}

int fileio_mkdirs(const char *dir, Err *err)
{
    char buf[FILEIO_PATH_MAX];
    if (strlen(dir) >= sizeof buf) return err_set(err, AE_EARG, "%s: path too long", dir);
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return err_set(err, AE_EIO, "cannot create folder %s: %s", buf, strerror(errno));
            struct stat st;
            if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
                return err_set(err, AE_EIO, "%s exists and is not a folder", buf);
            *p = c;
            if (c == '\0') break;
        }
    }
    return AE_OK;
}

int64_t fileio_disk_read_bytes(void)
{
    FILE *f = fopen("/proc/self/io", "r");
    if (!f) return -1;
    char line[128];
    long long v = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "read_bytes: %lld", &v) == 1) break;
    fclose(f);
    return v;
}

int fileio_rss_kib(int64_t *anon, int64_t *file)
{
    *anon = *file = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[128];
    long long v;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "RssAnon: %lld", &v) == 1) *anon = v;
        else if (sscanf(line, "RssFile: %lld", &v) == 1) *file = v;
    }
    fclose(f);
    return *anon >= 0 && *file >= 0 ? 0 : -1;
}

int64_t fileio_vm_size_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[128];
    long long v, kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %lld", &v) == 1) kib = v;
    fclose(f);
    return kib;
}

char *fileio_read_text(const char *path, size_t max, size_t *len, Err *err)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        err_set(err, AE_EIO, "cannot open %s: %s", path, strerror(errno));
        if (f) fclose(f);
        return NULL;
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > max) {
        fclose(f);
        err_set(err, AE_EFORMAT, "%s is larger than %zu bytes", path, max);
        return NULL;
    }
    char *buf = xmalloc((size_t)st.st_size + 1);
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    const int bad = ferror(f);
    fclose(f);
    if (bad) {
        err_set(err, AE_EIO, "cannot read %s", path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}
