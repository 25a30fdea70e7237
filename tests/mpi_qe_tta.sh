#!/usr/bin/env bash
# MPI tests of aesim-search --tta and --qe (see tests/mpi_qe_tta.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_qe_tta.py"
