#!/usr/bin/env bash
# launch/mpi.sh NP PROGRAM [args...]: runs NP ranks of an aesim program on this
# machine with a sane thread plan: the programs give each rank cores/NP
# OpenMP threads; ranks are left unbound when NP < cores (so a rank's threads
# can use several cores) and --oversubscribe is added only when NP > cores.
# Sets Open MPI's run-as-root variables when run as root (containers, CI).
set -euo pipefail
np=${1:?usage: launch/mpi.sh NP PROGRAM [args...]}; shift
cores=$(nproc)
args=(-np "$np")
if [ "$np" -gt "$cores" ]; then args+=(--oversubscribe --bind-to none)
elif [ "$np" -lt "$cores" ]; then args+=(--bind-to none); fi
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
exec mpirun "${args[@]}" "$@"
