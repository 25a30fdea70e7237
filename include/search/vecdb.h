/*
 * vecdb.h - the vector database of aesim-search on disk: a folder with one
 * JSON manifest and, per shard, three .npy arrays and a text file.
 *
 * Layout of a database folder DIR (format "aesim-vecdb", version 1):
 *   DIR/manifest.json              written last, atomically: it is the commit
 *                                  point (shard files it does not list are
 *                                  ignored, e.g. after a failed --append)
 *   DIR/shard-SSSSS.vectors.npy    float32 [n][D], row j = vector of id first_id + j
 *   DIR/shard-SSSSS.ids.npy        int64 [n], = first_id, first_id+1, ... (checked)
 *   DIR/shard-SSSSS.labels.npy     int32 [n], the image's label, -1 when none
 *   DIR/shard-SSSSS.names.txt      n lines, the image's name (imgset.h: "FILE#ROW")
 * SSSSS is the shard number (0-based position in the manifest's shard list,
 * printed with at least 5 digits).  An index run on P ranks adds P shards
 * (rank r writes shard S0 + r, S0 = shards already there); a shard may be
 * empty (n = 0).  Shards hold consecutive id ranges in list order, so global
 * ids are 0..count-1 with no gaps.  The .npy files are NumPy format 1.0
 * (npy.h), readable with numpy.load.
 *
 * manifest.json (jansson), every key required but pixel_mean:
 *   "format": "aesim-vecdb", "version": 1,
 *   "model": { "crc32": "8 hex digits" (CRC-32 of the encoder checkpoint's
 *              parameter bytes, as aesim-train prints it), "arch": spec text,
 *              "input_shape": [C, H, W], "checkpoint": path used at index time },
 *   "dim": D, "count": total vectors, "metric": "l2" | "cosine" (default of query),
 *   "sources": [ { "spec": source as given, "first_id", "count",
 *                  "items": [ { "path": absolute path, or a path relative
 *                               to the database folder for files the folder
 *                               holds itself (serve's added-SSSSS.npz), so
 *                               that a moved or copied folder keeps them
 *                               (vecdb_item_path), "count" } ... ],
 *                  "pixel_mean": mean pixel in [0, 1] (optional: older
 *                  manifests lack it; readers then skip the polarity check) } ... ]
 *              one entry per index / --append run, in id order,
 *   "shards":  [ { "shard": number, "count", "first_id", "last_id" } ... ]
 *              last_id = first_id + count - 1 (first_id - 1 when empty).
 * vecdb_read checks all of it: types, version, D >= 1, shard numbers equal
 * to their positions, contiguous ids, and counts that add up.
 *
 * Optional search settings (issue 17; absent = none, as in older manifests):
 *   "transform": "whiten"   the vectors are PCA-whitened codes (whiten.h);
 *   "whiten_dim": K         only the K directions of largest variance are kept
 *                           (the others are zero; index --whiten-dim);
 *   "tta": "flip,shift:1"   every vector is the mean of the codes of views of the
 *                           image (test-time augmentation, VecDbTta below), and
 *                           queries are encoded the same way;
 *   "query_expansion": { "n": N, "alpha": A }  k-NN searches use alpha query
 *                           expansion with these defaults (search_core.h).
 *
 * Version 2 (written when the database has an IVF index, ivf.h) adds
 *   "ivf": { "nlist": NLIST, "crc32": "8 hex digits" (zlib CRC-32 of the
 *            centroids' data bytes), "centroids": "ivf-<crc32>.centroids.npy",
 *            "normalized": true (only for a cosine database: the centroids
 *            are the spherical k-means of the L2-normalised vectors and the
 *            lists hold them by inner product, ivf.h; absent = built on the
 *            stored vectors, as every l2 index and the cosine indexes of
 *            aesim-search before this key existed, which probed the wrong
 *            lists and are refused until retrained) }
 * and, per shard, DIR/shard-SSSSS.ivf-<crc32>.lists.npy (ivf.h).  Version-1
 * databases still open (no IVF: searches stay exact).
 *
 * Reading for search: vecdb_shard_map maps a shard's files read-only with
 * mmap(2), so a rank only touches the shards it owns (the OS pages in what
 * the scan reads).  Which rank owns a shard: vecdb_shard_owner, shard s goes
 * to rank s % P, for any P (a rank may own several shards or none).
 *
 * No MPI here (search.c decides which rank reads or writes what); no global
 * state; a VecDb / VecShard is used by one thread at a time.
 */
#ifndef AESIM_VECDB_H
#define AESIM_VECDB_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "search/knn.h"
#include "model/model.h"

#define VECDB_FORMAT "aesim-vecdb"
#define VECDB_VERSION 1
/* Version of a database with an IVF index (the "ivf" key). */
#define VECDB_VERSION_IVF 2
#define VECDB_MANIFEST "manifest.json"
/* The writer's lock file of a database folder (fileio_lock_dir). */
#define VECDB_LOCK_NAME ".aesim-db.lock"
/* Longest path handled (folder + file name), bytes including the NUL. */
#define VECDB_PATH_BYTES 4096
/* Longest name line in a names.txt file, bytes including the NUL. */
#define VECDB_NAME_BYTES 512

/* Test-time augmentation of the encoder (VecDb.tta, manifest "tta", index
 * --tta): the vector of an image is the mean of the codes of its views,
 * the image itself, its horizontal mirror when flip, and (shift = S > 0)
 * each of those translated by S pixels left, right, up and down with zero
 * fill (as aesim-train's --augment shift, augment.h): 1 + flip views times
 * 1 + 4 (shift) views.  {0, 0} = none. */
typedef struct VecDbTta {
    int flip;   /* 0 or 1 */
    int shift;  /* pixels, 0..VECDB_MAX_TTA_SHIFT */
} VecDbTta;
#define VECDB_MAX_TTA_SHIFT 8

/* Parses a --tta / manifest value: "none", or a comma list of "flip" and
 * "shift:S" (1 <= S <= VECDB_MAX_TTA_SHIFT), e.g. "flip,shift:1".  what
 * names the value in the message.  Errors: AE_EARG (unknown item, bad S). */
int vecdb_tta_parse(VecDbTta *t, const char *s, const char *what, Err *err);

/* The canonical text of t ("none", "flip", "shift:1", "flip,shift:1") into
 * buf[cap]; returns buf. */
const char *vecdb_tta_name(const VecDbTta *t, char *buf, size_t cap);

/* Views of one image under t: (1 + flip) * (1 + 4 if shift). */
int vecdb_tta_views(const VecDbTta *t);

/* Largest query-expansion n and alpha accepted (manifest and --qe / --qe-alpha). */
#define VECDB_MAX_QE 100
#define VECDB_MAX_QE_ALPHA 100.0

/* Files of one shard (vecdb_shard_path). */
typedef enum { VECDB_VECTORS = 0, VECDB_IDS = 1, VECDB_LABELS = 2, VECDB_NAMES = 3 } VecDbFile;

/* Which arrays vecdb_shard_map maps (bit mask of 1 << VecDbFile). */
#define VECDB_MAP_VECTORS (1u << VECDB_VECTORS)
#define VECDB_MAP_IDS (1u << VECDB_IDS)
#define VECDB_MAP_LABELS (1u << VECDB_LABELS)
#define VECDB_MAP_ALL (VECDB_MAP_VECTORS | VECDB_MAP_IDS | VECDB_MAP_LABELS)

typedef struct VecDbItem {
    char *path;       /* absolute path of the file or folder (owned) */
    int64_t count;    /* images it held at index time */
} VecDbItem;

typedef struct VecDbSource {
    char *spec;       /* the --data value as given (owned) */
    int64_t first_id; /* id of its first image */
    int64_t count;    /* images, = sum of item counts */
    double pixel_mean; /* mean pixel value of its images scaled to [0, 1] (query warns when query images are far
                          from it: opposite polarity); -1 = unknown (manifests written before it existed) */
    int n_items;
    VecDbItem *items; /* [n_items], owned */
    int n_classes;    /* names of labels 0..n_classes-1 (optional "classes" key: image folders' class
                         sub-folders, aesim-pack stores' classes), 0 = none recorded */
    char **classes;   /* [n_classes], owned */
} VecDbSource;

typedef struct VecDbShard {
    int64_t count;    /* vectors, >= 0 */
    int64_t first_id; /* id of row 0 */
} VecDbShard;

/* A database's manifest in memory (all strings and lists owned). */
typedef struct VecDb {
    char dir[VECDB_PATH_BYTES];  /* the folder */
    uint32_t model_crc;          /* CRC-32 of the encoder parameters */
    char arch[MODEL_SPEC_MAX];   /* encoder architecture spec */
    int C, H, W;                 /* model input shape */
    char checkpoint[VECDB_PATH_BYTES]; /* checkpoint path at index time (informative) */
    int D;                       /* vector dimension */
    int64_t count;               /* vectors in all */
    KnnMetric metric;            /* default metric: KNN_L2 ("l2") or KNN_IP ("cosine") */
    int whiten;                  /* 1: vectors are PCA-whitened codes (whiten.h), queries get the
                                    same transform; manifest "transform": "whiten" (optional key,
                                    absent = none, as in databases written before it) */
    int whiten_dim;              /* whitened: directions kept (index --whiten-dim), 0 = all D;
                                    manifest "whiten_dim" (optional, 1 .. D-1, only with "transform") */
    VecDbTta tta;                /* test-time augmentation (manifest "tta", optional; absent = none) */
    int qe_n;                    /* query expansion: neighbours added to a query, 0 = none
                                    (manifest "query_expansion", optional) */
    double qe_alpha;             /* query expansion: similarity exponent alpha (>= 0) */
    int n_sources;
    VecDbSource *sources;        /* [n_sources] in id order */
    int n_shards;
    VecDbShard *shards;          /* [n_shards]; shard s has number s */
    int ivf_nlist;               /* IVF lists (version 2), 0 = no IVF index */
    uint32_t ivf_crc;            /* CRC-32 of the IVF centroids (names their files) */
    int ivf_normalized;          /* 1: the IVF index was built on L2-normalised vectors (cosine databases,
                                    ivf.h; manifest "ivf": {"normalized": true}); 0: on the stored vectors
                                    (l2, and cosine indexes written before the fix, which ivf.c refuses) */
} VecDb;

/* A new, empty database description for folder dir (no file is written). */
void vecdb_init(VecDb *db, const char *dir, uint32_t model_crc, const char *arch, int C, int H, int W,
                const char *checkpoint, int D, KnnMetric metric);

/* Reads and validates dir/manifest.json (see the file comment).
 * Errors (message names the file and ends with a hint): AE_EIO when the
 * folder or manifest is missing or unreadable ("not an aesim database?");
 * AE_EFORMAT for invalid JSON (jansson's line and column), a missing or
 * mistyped key, another format or version, counts or ids that do not add up.
 * On error *db holds nothing to free. */
int vecdb_read(VecDb *db, const char *dir, Err *err);

/* Writes db->dir/manifest.json atomically (fileio.h).  Errors: AE_EIO. */
int vecdb_write_manifest(const VecDb *db, Err *err);

/* Frees the lists and zeroes *db.  db may be NULL. */
void vecdb_free(VecDb *db);

/* Appends a source run (copies the strings).  paths[n_items], counts[n_items];
 * its first_id is db->count at the time of the call and its count the sum.
 * Does not change db->count (vecdb_add_shard does). */
void vecdb_add_source(VecDb *db, const char *spec, int n_items, const char *const *paths, const int64_t *counts);

/* The file of item path `item` of one of db's sources into out[cap]: item
 * itself when absolute, else "db->dir/item" (a file inside the database
 * folder).  Returns AE_OK, or AE_EARG (with err) if it does not fit. */
int vecdb_item_path(char *out, size_t cap, const VecDb *db, const char *item, Err *err);

/* Records the class names of source s's labels 0..n-1 (copied; replaces
 * any names recorded before; n = 0 records none). */
void vecdb_set_classes(VecDbSource *s, const char *const *names, int n);

/* Appends shard number db->n_shards holding ids db->count .. db->count+count-1
 * and adds count to db->count.  count >= 0. */
void vecdb_add_shard(VecDb *db, int64_t count);

/* "DIR/shard-SSSSS.<vectors.npy|ids.npy|labels.npy|names.txt>" into out[cap].
 * Returns AE_OK or AE_EARG (with err) if it does not fit. */
int vecdb_shard_path(char *out, size_t cap, const char *dir, int shard, VecDbFile file, Err *err);

/* Rank that owns shard s when P ranks search: s % P. */
int vecdb_shard_owner(int shard, int P);

/* Index of the shard holding global id, or -1 if 0 <= id < count fails.
 * Binary search over first_id. */
int vecdb_shard_of(const VecDb *db, int64_t id);

/* Writes the four files of shard `shard` (see layout), each atomically:
 *   x       [n][D] float32 vectors (may be NULL when n == 0)
 *   labels  [n] int32, -1 for none (may be NULL when n == 0)
 *   names   [n] NUL-terminated names without tabs or newlines
 *   first_id  id of row 0 (ids.npy is first_id .. first_id+n-1)
 * Errors: AE_EIO naming the file (errno text), AE_EARG for a name holding a
 * newline or longer than VECDB_NAME_BYTES - 1. */
int vecdb_write_shard(const char *dir, int shard, const float *x, const int32_t *labels, const char *const *names,
                      int64_t n, int D, int64_t first_id, Err *err);

/* One shard mapped read-only (mmap).  Pointers are valid until
 * vecdb_shard_unmap; arrays not asked for are NULL. */
typedef struct VecShard {
    int shard;               /* shard number */
    int64_t count, first_id; /* from the manifest, checked against the files */
    int D;
    const float *x;          /* [count][D] */
    const int64_t *ids;      /* [count], = first_id + j */
    const int32_t *labels;   /* [count] */
    void *map[3];            /* mmap base per VecDbFile (NULL if not mapped) */
    size_t map_bytes[3];
} VecShard;

/* Maps the arrays of shard `shard` named by `want` (VECDB_MAP_* bits) and
 * checks each: NumPy magic and header ('<f4' / '<i8' / '<i4', C order,
 * shape (count, D) / (count,)), file size = header + data exactly, data
 * offset aligned for its type, and ids = first_id + j.  The data are not
 * otherwise read (pages load on first use).
 * Errors (message names the file, ends with "hint: the shard is damaged;
 * rebuild the database with aesim-search index"): AE_EIO missing or
 * unreadable file; AE_EFORMAT bad magic/header, wrong dtype, wrong shape
 * (e.g. "has 392 columns but the manifest says D = 100"), size mismatch
 * (truncated or padded), ids not consecutive.  On error nothing stays mapped. */
int vecdb_shard_map(VecShard *s, const VecDb *db, int shard, unsigned want, Err *err);

/* Unmaps everything and zeroes *s.  s may be NULL or zeroed. */
void vecdb_shard_unmap(VecShard *s);

/* Reads shard `shard`'s names.txt: *names is one block holding
 * count * VECDB_NAME_BYTES chars, name j at (*names) + j * VECDB_NAME_BYTES
 * (free with free()).  Errors: AE_EIO (missing file), AE_EFORMAT (line count
 * differs from the manifest's count, or a line too long). */
int vecdb_read_names(char **names, const VecDb *db, int shard, Err *err);

/* vecdb_read_names with the names packed (about 30 bytes per name instead
 * of VECDB_NAME_BYTES, for databases of millions of vectors): *text holds
 * the count NUL-terminated names one after the other, name j at
 * *text + (*offsets)[j] (free both with free()).  Same checks and errors. */
int vecdb_read_names_packed(char **text, int64_t **offsets, const VecDb *db, int shard, Err *err);

/* "l2" / "cosine" for KNN_L2 / KNN_IP. */
const char *vecdb_metric_name(KnnMetric m);

/* Parses "l2" or "cosine" into *m; returns AE_OK or AE_EARG (with err naming
 * the accepted values; `what` names the option or key in the message). */
int vecdb_metric_parse(KnnMetric *m, const char *text, const char *what, Err *err);

/* Removes the temporary files (fileio_remove_dead_temps: NAME.tmp.PID, or
 * libzip's NAME.tmp.PID.XXXXXX for whiten.npz, of the database's own names
 * only: manifest.json, shard-*, ivf-*, whiten.npz, added-*; their writer's
 * pid no longer runs) that a writer killed
 * mid-write left in database folder dir.  Call only while holding the
 * folder's writer lock (VECDB_LOCK_NAME): then no live writer owns one.
 * Returns how many were removed (0 when dir cannot be read). */
int vecdb_remove_stale_temps(const char *dir);

#endif
