#!/usr/bin/env bash
# Single-node launcher: launch/train.sh NP [aesim-train options...]
# Runs NP ranks of build/aesim-train on this machine with a sane thread plan:
# each rank gets cores/NP OpenMP threads (aesim-train's default), ranks are
# bound to cores when NP >= cores and left unbound otherwise (so a rank's
# threads can use several cores), and --oversubscribe is added only when NP
# exceeds the cores.  Environment: AESIM_BUILD (default build).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
np=${1:?usage: launch/train.sh NP [aesim-train options...]}; shift
bin=${AESIM_BIN:-$here/${AESIM_BUILD:-build}/aesim-train}
[ -x "$bin" ] || { echo "train.sh: $bin not built; run make" >&2; exit 1; }
cores=$(nproc)
args=(-np "$np")
if [ "$np" -gt "$cores" ]; then args+=(--oversubscribe --bind-to none); 
elif [ "$np" -lt "$cores" ]; then args+=(--bind-to none); fi
# Open MPI refuses to run as root without these (containers, CI).
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
progress=lines
[ -t 1 ] && progress=bar
exec mpirun "${args[@]}" "$bin" --progress "$progress" "$@"
