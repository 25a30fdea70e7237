#!/usr/bin/env bash
# Installs the Debian 12 packages aesim needs to build, run and test, if any
# are missing (apt-get; uses sudo when not root).  Safe to run again.
# Covers everything `make`, `make test` and CI (.ci/run: check-asan,
# valgrind, fuzz, test) call; tests/test_setup.py checks that against the
# tools and Python modules the scripts use, and that the README's package
# list is this one.
#   launch/install-deps.sh          install what is missing
#   launch/install-deps.sh --list   print the package names, one per line
#   launch/install-deps.sh --help   usage; any other argument is an error (exit 2)
set -euo pipefail
PKGS=(
  build-essential pkg-config            # compiler, make, pkg-config
  openmpi-bin libopenmpi-dev            # mpirun, mpicc
  libopenblas-dev                       # GEMM
  libpng-dev zlib1g-dev libzip-dev      # PNG, zlib, npz (zip) files
  libjpeg62-turbo-dev                   # JPEG images (libjpeg-turbo)
  libjansson-dev                        # JSON (search manifest, --json results)
  libmicrohttpd-dev                     # HTTP server of aesim-search serve
  libcmocka-dev                         # C unit-test framework
  clang libclang-rt-14-dev              # libFuzzer targets (make fuzz)
  valgrind                              # memcheck of short training runs (make valgrind, CI)
  iproute2                              # ip netns: the two-host MPI test (tests/mpi_reliability.py)
  git                                   # build info (commit) printed at start-up
  dataset-fashion-mnist                 # default training data (/usr/share/datasets/fashion-mnist)
  gnuplot-nox                           # loss-curve plot
  chromium curl                         # serve's web page test (headless), README curl examples
  python3 python3-numpy python3-torch python3-faiss python3-pil   # reference implementations for tests
)
usage="usage: launch/install-deps.sh [--list | --help]
  (no option)  install the missing Debian packages (apt-get; sudo when not root)
  --list       print the package names, one per line
  --help       this text"
case $# in
  0) ;;
  1) case $1 in
       --list) printf '%s\n' "${PKGS[@]}"; exit 0;;
       --help|-h) echo "$usage"; exit 0;;
       *) echo "install-deps: unknown argument '$1'" >&2; echo "$usage" >&2; exit 2;;
     esac;;
  *) echo "install-deps: one option at most, got $#: $*" >&2; echo "$usage" >&2; exit 2;;
esac
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} Debian packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
