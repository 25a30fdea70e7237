#!/usr/bin/env bash
# See tests/mpi_threads.py.
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_threads.py"
