#!/usr/bin/env bash
# launch/mpi.sh NP PROGRAM [args...]: runs NP ranks of an aesim program on this
# machine with a sane thread plan: the programs give each rank cores/NP
# OpenMP threads; ranks are left unbound when NP < cores (so a rank's threads
# can use several cores) and --oversubscribe is added only when NP > cores.
# Sets Open MPI's run-as-root variables when run as root (containers, CI).
# mpirun runs with -q: after a rank exits non-zero, Open MPI would add two
# boxes of text ("Primary job terminated normally, but 1 process returned a
# non-zero exit code ...") under the program's own one-line error.  -q also
# silences mpirun's own start-up errors, so what they would be about is
# checked here first: the program must exist and NP be a positive number
# (--oversubscribe below covers the slot count).
set -euo pipefail
np=${1:?usage: launch/mpi.sh NP PROGRAM [args...]}; shift
prog=${1:?usage: launch/mpi.sh NP PROGRAM [args...]}
[[ $np =~ ^[1-9][0-9]*$ ]] || { echo "mpi.sh: NP '$np' is not a positive number" >&2; exit 2; }
command -v "$prog" >/dev/null 2>&1 || { echo "mpi.sh: $prog: no such program (run make?)" >&2; exit 2; }
cores=$(nproc)
args=(-q -np "$np")
if [ "$np" -gt "$cores" ]; then args+=(--oversubscribe --bind-to none)
elif [ "$np" -lt "$cores" ]; then args+=(--bind-to none); fi
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
exec mpirun "${args[@]}" "$@"
