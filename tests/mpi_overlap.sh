#!/usr/bin/env bash
# MPI tests of the bucketed, overlapped gradient allreduce (see tests/mpi_overlap.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_overlap.py"
