/*
 * search.h - the three jobs of aesim-search: index (encode a data source on
 * P ranks into a sharded vector database, vecdb.h), query (exact k-NN or
 * range search of encoded query images over the shards, on any number of
 * ranks) and eval (precision@k by label, aesim encoder vs raw pixels vs PCA).
 * index and query live in src/search/search.c, eval in src/search/search_eval.c; the
 * pieces they share (encoder, sharded search, metadata) in search_core.h.
 * The fourth job, serve (the same search as a long-running HTTP service),
 * is in serve.h.
 *
 * MPI (through par.h only; every function is collective and returns the
 * same status on every rank, agreed with par_agree, so all ranks leave
 * together and rank 0 prints the one message):
 *   index  rank r encodes the contiguous slice [N r / P, N (r+1) / P) of the
 *          source; its global ids start at the existing count plus
 *          par_exscan_sum_i64 of the slice sizes; it writes shard S0 + r;
 *          rank 0 then writes the manifest (the commit point).
 *   query  shard s is searched by rank s % P (vecdb_shard_owner), from its
 *          mmapped vectors; query vectors are encoded on rank 0 and
 *          broadcast; per-rank top-k lists (each rank merges its own shards
 *          first with knn_merge) are gathered to rank 0 and merged with
 *          knn_merge, so the result is the exact global top k, ordered by
 *          distance, ties by smaller id, the same for any P (knn.h
 *          "Exactness").  Rank 0 writes all outputs.
 *   eval   as query, for the test images of --queries; the baselines index
 *          the database's own source images in memory with the same shard
 *          ownership.
 * Threading: the encoder and knn_search_local use the OpenMP threads of the
 * thread plan (threads.h); BLAS stays single-threaded inside them.
 */
#ifndef AESIM_SEARCH_H
#define AESIM_SEARCH_H

#include "base/err.h"
#include "par/par.h"
#include "search/search_args.h"

/* Precision@k is printed with this many decimals. */
#define SEARCH_PRECISION_DECIMALS 4

/* All ranks, before a command does any work (issue 13: nothing of another
 * run is replaced unasked).  Refuses, with AE_EIO agreed on all ranks and a
 * message naming the file (or database) and --overwrite:
 *   query, eval: an existing --out or --sheet file unless cfg->overwrite,
 *                and always one that is not a regular file
 *                (fileio_check_output);
 *   train-ivf:   a database that already has an IVF index, unless
 *                cfg->overwrite (a missing or damaged database is left to
 *                search_train_ivf's own error).
 * Other commands: AE_OK. */
int search_check_outputs(const ParCtx *ctx, const SearchConfig *cfg, Err *err);

/* aesim-search index.  Errors (agreed): AE_EIO/AE_EFORMAT for the
 * checkpoint, source or output files; AE_ESHAPE when the images do not fit
 * the model's input; AE_EARG when the folder already holds a database and
 * --append is not given, or --append with a database of another model
 * (CRC-32 or D differs), or --append --ivf N on a database that already has
 * an IVF index (new vectors join its lists; train-ivf --overwrite retrains); AE_ENUMERIC when a vector holds NaN/Inf (names the
 * image). */
int search_index(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err);

/* aesim-search query.  Writes the TSV (or JSON) results to cfg->out or
 * stdout, and the contact sheet if asked.  Errors (agreed): AE_EIO/AE_EFORMAT
 * for a missing or damaged database, shard, checkpoint, image or id file;
 * AE_ESHAPE for a model or query file whose D differs from the database's,
 * or an image of another size; AE_EARG for a model other than the one that
 * built the database, ids out of range, --sheet without query images. */
int search_query(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err);

/* aesim-search eval.  Prints the precision@k table (rows: labels and the
 * mean; columns: aesim and each baseline).  Errors as search_query, plus
 * AE_EFORMAT when the queries or the database have no labels, and AE_EIO /
 * AE_EFORMAT when a baseline cannot reload the database's source images (or
 * they changed: counts differ from the manifest). */
int search_eval(const ParCtx *ctx, const SearchConfig *cfg, int nthreads, Err *err);

#endif
