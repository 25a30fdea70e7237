#!/usr/bin/env bash
# The web page of aesim-search serve in headless Chromium (see tests/mpi_serve_web.py).
exec "${PYTHON:-/usr/bin/python3}" "$(dirname "$0")/mpi_serve_web.py"
