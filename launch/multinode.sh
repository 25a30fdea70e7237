#!/usr/bin/env bash
# Multi-node launcher: launch/multinode.sh HOSTFILE NP [aesim-train options...]
# HOSTFILE lists nodes and slots (edit hostfile.example: its node names are
# placeholders).  Ranks are placed by slot, each bound to T cores of its node
# (--map-by slot:PE=T --bind-to core), T = the --threads option if given,
# else OMP_NUM_THREADS if set, else 1; aesim-train then runs T OpenMP threads
# per rank.  For hybrid MPI x OpenMP runs give --threads T and T times fewer
# slots per node than cores.  OMP_NUM_THREADS and OPENBLAS_NUM_THREADS are
# passed to the ranks when they are set.  The build folder and data paths
# must be visible at the same path on every node (shared file system).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
hostfile=${1:?usage: launch/multinode.sh HOSTFILE NP [options...]}; np=${2:?NP missing}; shift 2
pe=${OMP_NUM_THREADS:-1}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --threads) pe=${args[i + 1]:-};;
        --threads=*) pe=${args[i]#--threads=};;
    esac
done
[[ $pe =~ ^[1-9][0-9]*$ ]] || { echo "multinode.sh: threads per rank '$pe' is not a positive number" >&2; exit 2; }
env_args=()
for v in OMP_NUM_THREADS OPENBLAS_NUM_THREADS; do
    if [ -n "${!v+set}" ]; then env_args+=(-x "$v"); fi
done
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
exec mpirun --hostfile "$hostfile" -np "$np" --map-by "slot:PE=$pe" --bind-to core \
     ${env_args[@]+"${env_args[@]}"} \
     "$here/${AESIM_BUILD:-build}/aesim-train" "$@"
