#!/usr/bin/env bash
# MPI tests of aesim-search (see tests/mpi_search.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_search.py"
