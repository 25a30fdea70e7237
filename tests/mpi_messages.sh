#!/usr/bin/env bash
# See tests/mpi_messages.py.
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_messages.py"
