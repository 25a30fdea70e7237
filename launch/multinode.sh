#!/usr/bin/env bash
# Multi-node launcher: launch/multinode.sh HOSTFILE NP [aesim-train options...]
# HOSTFILE lists nodes and slots (see hostfile.example).  Ranks are placed by
# slot and bound to cores; give --threads T (and fewer slots per node) for
# hybrid MPI x OpenMP runs.  The build folder and data paths must be visible
# at the same path on every node (shared file system).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
hostfile=${1:?usage: launch/multinode.sh HOSTFILE NP [options...]}; np=${2:?NP missing}; shift 2
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
exec mpirun --hostfile "$hostfile" -np "$np" --map-by slot \
     -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
     "$here/${AESIM_BUILD:-build}/aesim-train" "$@"
