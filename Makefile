# aesim Makefile
#   make            build/aesim-train (and every other src/tools/*_main.c program), build/libaesim.a
#   make check-layers  the layer rules of src/ and include/ (README "Code map")
#   make test       build and run the whole test suite (ends with "N passed, N failed")
#   make asan       serial (MPI=0) build with AddressSanitizer+UBSan, runs the unit tests
#   make bench      benchmarks against PyTorch/FAISS (not part of the tests)
#   make bench-programs  only build the benchmark programs (build/bench/bench_*)
#   make run        the README main job (Fashion-MNIST, 2 ranks)
#   make clean
# Switches: MPI=0 (serial stubs instead of Open MPI), OMP=0 (no OpenMP),
#           WERROR=1 (-Werror, used by CI), BUILD=dir (output folder).

MPI ?= 1
OMP ?= 1
WERROR ?= 0
BUILD ?= build
MPICC ?= mpicc
PYTHON ?= /usr/bin/python3

# Required libraries, found with pkg-config (no hard-coded system paths).
PKGS := openblas libpng zlib libzip jansson libjpeg libmicrohttpd
PKG_OK := $(foreach p,$(PKGS),$(if $(shell pkg-config --exists $(p) && echo y),$(p)))
PKG_MISSING := $(filter-out $(PKG_OK),$(PKGS))

ifeq ($(MPI),1)
  CC := $(MPICC)
  PAR_SRC := src/par/par_mpi.c
else
  CC ?= cc
  ifeq ($(origin CC),default)
    CC := cc
  endif
  PAR_SRC := src/par/par_serial.c
endif

OPT ?= -O2
CFLAGS += $(OPT) -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra -MMD -MP -Iinclude -I$(BUILD)
CFLAGS += $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -pthread
ifeq ($(OMP),1)
  CFLAGS += -fopenmp
  LDFLAGS += -fopenmp
endif
ifeq ($(WERROR),1)
  CFLAGS += -Werror
endif
# SAN=1: AddressSanitizer + UndefinedBehaviorSanitizer (make asan).
ifeq ($(SAN),1)
  CFLAGS += -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
CFLAGS += -DAESIM_MPI=$(MPI) -DAESIM_OMP=$(OMP)

# src/LAYER/*.c by layer (README "Code map"); the programs' mains are src/tools/*_main.c.
MAINS := $(wildcard src/tools/*_main.c)
LIB_SRC := $(filter-out src/par/par_mpi.c src/par/par_serial.c,$(wildcard src/*/*.c))
LIB_SRC := $(filter-out $(MAINS),$(LIB_SRC)) $(PAR_SRC)
LIB_OBJ := $(LIB_SRC:src/%.c=$(BUILD)/obj/%.o)
PROGS := $(MAINS:src/tools/%_main.c=$(BUILD)/aesim-%)
TEST_SRC := $(wildcard tests/test_*.c)
TESTS := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: bench-data all test asan bench bench-programs run clean deps-check check-layers
# Keep intermediate objects (no 'rm build/obj/x_main.o' after linking).
.SECONDARY:
all: deps-check $(PROGS) $(BUILD)/libaesim.a

deps-check:
	@for p in $(PKGS); do \
	  if pkg-config --exists $$p; then echo "  ✓ $$p $$(pkg-config --modversion $$p)"; \
	  else echo "  ✗ $$p (missing: run ./launch/install-deps.sh)"; fi; done
	@if [ "$(MPI)" = 1 ]; then \
	  if command -v $(MPICC) >/dev/null; then echo "  ✓ MPI ($(MPICC))"; \
	  else echo "  ✗ MPI: $(MPICC) not found (run ./launch/install-deps.sh, or build with MPI=0)"; exit 1; fi; fi
	@test -z "$(PKG_MISSING)" || { echo "error: missing libraries: $(PKG_MISSING)"; exit 1; }

# Build information printed by rank 0 at start-up.
$(BUILD)/build_info.h: FORCE | $(BUILD)
	@printf '#define AESIM_BUILD_INFO "%s; CFLAGS %s; MPI=%s OMP=%s; git %s"\n' \
	  "$$($(CC) --version | head -n1)" "$(filter -O% -f% -m%,$(CFLAGS))" "$(MPI)" "$(OMP)" \
	  "$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$$(git diff --quiet HEAD 2>/dev/null || echo -dirty)" > $@.tmp
	@cmp -s $@.tmp $@ || mv $@.tmp $@; rm -f $@.tmp
# Phony, so it runs on every make: the plain `FORCE:` idiom does not, because
# `.SECONDARY:` above makes a missing FORCE an intermediate file that need
# not exist, and build_info.h kept the commit of the first build.
.PHONY: FORCE
FORCE:

# The compiler, flags and libraries of this build, rewritten only when they
# change (make WERROR=1, OPT=..., SAN=1, CC=... in a reused build folder):
# every object, program and test depends on it, so a flag change rebuilds
# them all and no object built without -Werror slips through.
BUILD_FLAGS := $(CC) | $(CFLAGS) | $(LDFLAGS) | $(LDLIBS)
$(BUILD)/flags.txt: FORCE | $(BUILD)
	@printf '%s\n' '$(subst ','\'',$(BUILD_FLAGS))' > $@.tmp
	@cmp -s $@.tmp $@ || mv $@.tmp $@; rm -f $@.tmp

$(BUILD) $(BUILD)/obj $(BUILD)/tests:
	@mkdir -p $@

# build_info.h is order-only: it exists before the first compile, and the
# -MMD dependency files rebuild just the objects that include it when the
# commit changes (src/tools/: version.o and the mains), not every object.
$(BUILD)/obj/%.o: src/%.c $(BUILD)/flags.txt | $(BUILD)/obj $(BUILD)/build_info.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The web page of aesim-search serve, embedded as a byte array (web_page.h).
$(BUILD)/web_page_html.h: src/search/web_page.html | $(BUILD)
	@{ echo 'static const unsigned char WEB_PAGE_HTML[] = {'; od -An -v -tx1 $< | sed 's/ \([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '};'; } > $@.tmp && mv $@.tmp $@
$(BUILD)/obj/search/web_page.o: $(BUILD)/web_page_html.h

$(BUILD)/libaesim.a: $(LIB_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/aesim-%: $(BUILD)/obj/tools/%_main.o $(BUILD)/libaesim.a $(BUILD)/flags.txt
	$(CC) $(LDFLAGS) $(filter %.o %.a,$^) $(LDLIBS) -o $@

$(BUILD)/tests/%: tests/%.c $(BUILD)/libaesim.a $(BUILD)/flags.txt | $(BUILD)/tests
	$(CC) $(CFLAGS) -Itests $< $(BUILD)/libaesim.a $(LDFLAGS) $(LDLIBS) -lcmocka -o $@

test: all $(TESTS)
	@BUILD=$(BUILD) PYTHON=$(PYTHON) MPI=$(MPI) AESIM_SAN=$(SAN) bash tests/run_tests.sh

# The layer rules (README "Code map"): includes only downwards, mpi.h only in
# src/par/, no data or file code in src/nn/.  Reads #include lines only.
check-layers:
	@$(PYTHON) tests/check_layers.py

asan:
	$(MAKE) MPI=0 SAN=1 OPT=-O1 BUILD=build-asan test

bench: all
	@BUILD=$(BUILD) PYTHON=$(PYTHON) bash launch/bench.sh

# make bench-programs: only builds the benchmark programs bench/bench_*.c into
# $(BUILD)/bench/ (e.g. build/bench/bench_ivf), to run one on its own;
# launch/bench.sh (make bench) builds them this way too.
BENCH_PROGS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(filter-out bench/bench_common.c,$(wildcard bench/bench_*.c)))
bench-programs: all $(BENCH_PROGS)
$(BUILD)/bench:
	@mkdir -p $@
$(BUILD)/bench/%: bench/%.c bench/bench_common.c bench/bench_common.h $(BUILD)/libaesim.a $(BUILD)/flags.txt | $(BUILD)/bench
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -Ibench $< bench/bench_common.c $(BUILD)/libaesim.a $(LDFLAGS) $(LDLIBS) -o $@

# make bench-data: the full-size downsampled ImageNet on disk (issue 18):
# generates 15.7 GB outside the repo (BENCH_DATA_DIR, default
# /var/tmp/aesim-bench-data; BENCH_DATA_SCALE=0.1 for a tenth) and reports
# start-up, storage bytes and memory per rank, images/s (bench/bench_data.py).
bench-data: all
	@BUILD=$(BUILD) $(PYTHON) bench/bench_data.py --scale $(or $(BENCH_DATA_SCALE),1.0)

run: all
	@bash launch/quickstart.sh

clean:
	rm -rf $(BUILD) $(BUILD)-valgrind $(BUILD)-fuzz build-asan

-include $(LIB_OBJ:.o=.d) $(wildcard $(BUILD)/obj/tools/*.d)

# Test helper programs (tests/tool_*.c): built by `make test`, run by the
# Python tests, never run on their own.
TOOLS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/tool_*.c))
test: $(TOOLS)

# ---- fuzzing (issue 3) ----------------------------------------------------
# make fuzz [FUZZ_SECONDS=N]: builds the libFuzzer targets in fuzz/ with clang
# (ASan+UBSan) into $(BUILD)-fuzz and runs each for N seconds (default 30).
# CI: make fuzz FUZZ_SECONDS=6  (6 targets, < 70 s with the build).
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 30
.PHONY: fuzz
fuzz:
	@bash fuzz/run.sh "$(FUZZ_CC)" "$(BUILD)-fuzz" "$(FUZZ_SECONDS)" "$(shell pkg-config --cflags $(PKGS) 2>/dev/null)" \
	  "$(shell pkg-config --libs $(PKGS) 2>/dev/null)"

# ---- reliability tooling (issue 5) ------------------------------------------
# make check-asan: the test suite under AddressSanitizer + UBSan (serial build,
#   the same as make asan).
# make valgrind: a serial MPI=0 OMP=0 -g build in $(BUILD)-valgrind, then short
#   training runs (fresh, resume past a damaged checkpoint, a NaN stop) under
#   valgrind memcheck; fails on any invalid access or definite leak
#   (tests/valgrind_train.sh).
.PHONY: check-asan valgrind
check-asan: asan

valgrind:
	$(MAKE) MPI=0 OMP=0 OPT="-O1 -g" BUILD=$(BUILD)-valgrind all
	@BUILD=$(BUILD)-valgrind PYTHON=$(PYTHON) bash tests/valgrind_train.sh
