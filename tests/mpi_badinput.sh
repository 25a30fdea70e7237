#!/usr/bin/env bash
# Hostile-input regression tests of aesim-train, aesim-search and aesim-pack (see tests/mpi_badinput.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_badinput.py"
