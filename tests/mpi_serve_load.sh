#!/usr/bin/env bash
# Load test of aesim-search serve (see tests/mpi_serve_load.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_serve_load.py"
