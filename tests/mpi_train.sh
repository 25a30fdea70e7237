#!/usr/bin/env bash
# MPI tests of aesim-train (see tests/mpi_train.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_train.py"
