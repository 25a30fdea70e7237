#!/usr/bin/env bash
# Output folders and resume of aesim-train (see tests/mpi_outdir.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_outdir.py"
