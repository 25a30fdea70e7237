#!/usr/bin/env bash
# What a training step reads from storage (see tests/mpi_data_io.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_data_io.py"
