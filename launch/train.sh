#!/usr/bin/env bash
# Single-node launcher: launch/train.sh NP [aesim-train options...]
# Runs NP ranks of build/aesim-train through launch/mpi.sh (thread plan,
# binding, oversubscription, root variables), with the live progress bar when
# this script's stdout is a terminal and plain lines otherwise.
# Environment: AESIM_BUILD (default build).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
np=${1:?usage: launch/train.sh NP [aesim-train options...]}; shift
bin=${AESIM_BIN:-$here/${AESIM_BUILD:-build}/aesim-train}
[ -x "$bin" ] || { echo "train.sh: $bin not built; run make" >&2; exit 1; }
progress=lines
[ -t 1 ] && progress=bar
exec "$here/launch/mpi.sh" "$np" "$bin" --progress "$progress" "$@"
