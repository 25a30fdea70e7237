/*
 * search_ivf.h - the IVF parts of aesim-search's commands (ivf.h is the
 * index itself): the train-ivf command, the choice between IVF and exact
 * search for query and eval (--nprobe, --exact), and eval --recall (recall@k
 * of the IVF answer against exact search, and queries/s, for a sweep of
 * nprobe).  Every function is collective (MPI through par.h) and returns the
 * same status on every rank (par_agree); rank 0 prints.
 */
#ifndef AESIM_SEARCH_IVF_H
#define AESIM_SEARCH_IVF_H

#include "base/err.h"
#include "par/par.h"
#include "search/ivf.h"
#include "search/search_args.h"
#include "search/search_core.h"
#include "search/vecdb.h"

/* aesim-search train-ivf --db DIR --nlist N: trains the IVF index of an
 * existing database (ivf_train_db) and commits the version-2 manifest.
 * Errors (agreed): vecdb_read's, ivf_train_db's, AE_EIO writing. */
int search_train_ivf(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err);

/* How query and eval search: nprobe = 0 means exact (no IVF in the database,
 * or --exact); else the lists of il are open. */
typedef struct SearchIvf {
    int nprobe;
    IvfLocal il;
} SearchIvf;

/* Collective.  Opens the IVF data of ls when db has an index and --exact is
 * not given (nprobe = cfg->nprobe or IVF_DEFAULT_NPROBE, at most nlist).
 * Errors: AE_EARG for --nprobe on a database without an IVF index (hint:
 * train-ivf), ivf_local_open's. */
int search_ivf_open(const ParCtx *ctx, SearchIvf *si, const SearchConfig *cfg, const VecDb *db,
                    const LocalShards *ls, Err *err);
void search_ivf_close(SearchIvf *si);

/* Collective.  search_knn / search_range, or their IVF versions when
 * si->nprobe > 0 (si may be NULL: exact). */
int search_ivf_knn(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, const LocalShards *ls,
                   const SearchIvf *si, int k, KnnMetric metric, int nthreads, Err *err);
int search_ivf_range(const ParCtx *ctx, KnnRange *out, const float *q, int64_t Q, const LocalShards *ls,
                     const SearchIvf *si, float radius, KnnMetric metric, int nthreads, Err *err);

/* Query expansion of a search (search_query_expand); n = 0: none. */
typedef struct SearchQe {
    int n;        /* database neighbours added to each query */
    double alpha; /* their weight: similarity^alpha */
} SearchQe;

/* Local.  The query expansion of query, eval and serve: --qe / --qe-alpha
 * when given, else the database's (manifest "query_expansion"), alpha
 * SEARCH_DEFAULT_QE_ALPHA when neither says.  Errors: AE_EARG when n > 0
 * and metric is not KNN_IP (cosine), or --qe-alpha is given without --qe
 * on a database that records no expansion. */
int search_qe_resolve(SearchQe *qe, const SearchConfig *cfg, const VecDb *db, KnnMetric metric, Err *err);

/* Collective.  search_ivf_knn with query expansion: with qe->n = 0 exactly
 * search_ivf_knn; else a first search for max(k, n) neighbours, the queries
 * expanded (search_query_expand on a copy of q[Q][D]; D the same on every
 * rank) and a second search for k:
 * *out (rank 0) holds the second, its values those of the expanded queries.
 * Errors: search_ivf_knn's. */
int search_ivf_knn_qe(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, int D, const LocalShards *ls,
                      const SearchIvf *si, int k, KnnMetric metric, const SearchQe *qe, int nthreads, Err *err);

/* The same over any KnnDbs (exact search_knn), for eval's baselines. */
int search_knn_qe(const ParCtx *ctx, TopK *out, const float *q, int64_t Q, int D, const KnnDb *dbs, int n_dbs,
                  int k, KnnMetric metric, const SearchQe *qe, int nthreads, Err *err);

/* aesim-search eval --recall: the queries (--queries: a float32 .npy of
 * vectors [Q][D], or with --model an image source encoded by the model;
 * --max-queries caps them; whitened as query's when the database is) are
 * searched exactly once, then with the IVF for
 * nprobe = 1, 2, 4, ... up to nlist (and --nprobe if given); prints per
 * nprobe recall@k (share of the exact k nearest ids found) and queries/s,
 * the exact row first (TSV, or --json).  Errors: AE_EARG when the database
 * has no IVF index; query and search errors. */
int search_ivf_recall(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err);

#endif
