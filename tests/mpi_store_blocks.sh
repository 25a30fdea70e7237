#!/usr/bin/env bash
# Per-block CRCs of aesim-pack stores (see tests/mpi_store_blocks.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_store_blocks.py"
