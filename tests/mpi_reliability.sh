#!/usr/bin/env bash
# Fault-injection tests of aesim-train: damaged checkpoints, signals, a killed
# rank, NaN, full disk, read-only folder, two hosts (see tests/mpi_reliability.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_reliability.py"
