#!/usr/bin/env bash
# MPI tests of aesim-search serve (see tests/mpi_serve.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_serve.py"
