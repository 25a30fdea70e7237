#!/usr/bin/env bash
# CRC checks shared by the ranks (see tests/mpi_verify.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_verify.py"
