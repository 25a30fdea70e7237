#!/usr/bin/env bash
# MPI tests of the IVF index of aesim-search (see tests/mpi_ivf.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_ivf.py"
