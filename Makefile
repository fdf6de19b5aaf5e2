# tasam build. `make` installs what is missing (deploy/deps.sh) and builds
# build/tasam and build/tasamd, with the CUDA backend where a GPU and nvcc
# are present. `make test` builds and runs every test, plain and under
# ASan+UBSan, compile-checks the CUDA sources where nvcc exists, then fuzzes
# for a bounded time; `make bench` runs the benchmarks. `make help` lists
# every target and variable.

CC      ?= cc
BUILD   ?= build
OPT     ?= -O3 -march=x86-64-v2 -mtune=generic
SAN     ?= 0
TSAN    ?= 0
FUZZ    ?= 0
CUDA    ?= auto
FUZZ_SECONDS ?= 15
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)

CSTD     = -std=c11 -D_GNU_SOURCE
WARN     = -Wall -Wextra -Werror -Wno-unused-parameter
INCLUDES = -I. -I/usr/include/x86_64-linux-gnu/openblas-pthread
CFLAGS_ALL = $(CSTD) $(WARN) $(OPT) -g -pthread -fno-strict-aliasing -fno-trapping-math $(INCLUDES) $(CFLAGS)
LDLIBS_ALL = -lopenblas -ljpeg -lpng -lz -ljansson -lmicrohttpd -luv -lsqlite3 -lm -lpthread $(LDLIBS)

# Build variants, each in its own folder: SAN=1 (ASan + UBSan), TSAN=1
# (ThreadSanitizer), FUZZ=1 (libFuzzer targets that link one instrumented
# library instead of recompiling every source per target).
ifeq ($(SAN),1)
  CC := clang
  BUILD := build/asan
  OPT := -O1 -fno-omit-frame-pointer
  CFLAGS_ALL += -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
  CUDA := 0
endif
ifeq ($(TSAN),1)
  CC := clang
  BUILD := build/tsan
  OPT := -O1 -fno-omit-frame-pointer
  CFLAGS_ALL += -fsanitize=thread
  LDFLAGS += -fsanitize=thread
  CUDA := 0
endif
ifeq ($(FUZZ),1)
  CC := clang
  BUILD := build/fuzz
  OPT := -O1 -fno-omit-frame-pointer
  CFLAGS_ALL += -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
  CUDA := 0
endif

# CUDA backend. CUDA=auto builds it where nvcc is found and the NVIDIA driver
# reports a GPU, for the GPUs present plus PTX of the newest (for later
# GPUs); elsewhere the build is CPU-only and `make test` compile-checks the
# CUDA sources for one architecture (cuda-check). CUDA=1 builds it for
# CUDA_ARCHS on any machine with nvcc; CUDA=0 never.
CUDA_SRC := $(wildcard engine/cuda/*.cu)
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(CUDA),auto)
  GPU_ARCHS := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d '. ' | sort -u)
  ifneq ($(and $(NVCC),$(CUDA_SRC),$(GPU_ARCHS)),)
    CUDA := 1
    CUDA_ARCHS ?= $(GPU_ARCHS)
  else
    CUDA := 0
    CUDA_NOTE := $(if $(NVCC),no NVIDIA GPU here,no nvcc here): the CPU backend only (CUDA=1 builds the CUDA backend anyway)
  endif
endif
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCHS ?= 75 80 86 89 90
CUDA_PTX := $(lastword $(sort $(CUDA_ARCHS)))
CUDA_CHECK_ARCH ?= 80
NVCC_COMMON = -O3 -std=c++17 -I. -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter,-fPIC
NVCCFLAGS = $(NVCC_COMMON) $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
            -gencode arch=compute_$(CUDA_PTX),code=compute_$(CUDA_PTX)
# The sm_75 (T4) kernels, engine/cuda/*_sm75.cu, whatever CUDA_ARCHS says:
# sm_75 code plus compute_75 PTX, which the driver JIT-compiles on any newer
# GPU, so TASAM_CUDA_KERNELS=sm75 runs the T4's code path there.
NVCCFLAGS_SM75 = $(NVCC_COMMON) -gencode arch=compute_75,code=[sm_75,compute_75]

ENGINE_SRC   := $(wildcard engine/*.c)
HYPERNET_SRC := $(wildcard hypernet/*.c)
ADAPTERS_SRC := $(wildcard adapters/*.c)
SERVER_SRC   := $(filter-out server/main.c,$(wildcard server/*.c))
TRAIN_SRC    := $(filter-out train/main.c,$(wildcard train/*.c))
CLIENTS_SRC  := $(wildcard clients/*.c)
CLI_SRC      := $(wildcard cli/*.c)
CLI_OBJ      := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)

ifeq ($(CUDA),1)
  CFLAGS_ALL += -DENG_HAVE_CUDA=1 -I$(CUDA_HOME)/include
  LDLIBS_ALL += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
  CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o)
else
  CUDA_OBJ :=
endif

# The demo page (server/web/): its files become byte arrays in one
# generated source (server/web/embed.sh), so tasamd serves it with nothing
# beside the binary.
WEB_FILES := $(sort $(wildcard server/web/*.html server/web/*.js server/web/*.css server/web/*.svg))
WEB_GEN   := $(BUILD)/gen/server/web_assets.c
WEB_OBJ   := $(BUILD)/obj/gen/server/web_assets.o

LIB_SRC  := $(ENGINE_SRC) $(HYPERNET_SRC) $(ADAPTERS_SRC) $(SERVER_SRC) $(TRAIN_SRC) $(CLIENTS_SRC)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(CUDA_OBJ) $(WEB_OBJ)
LIB      := $(BUILD)/libtasam.a

TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%) $(BUILD)/bench/tasam-bench
# tasam-bench is one program of several files (bench/tasam-bench/tb.h).
TB_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard bench/tasam-bench/*.c))
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/bin/%)

BINS := $(BUILD)/tasam $(BUILD)/tasamd $(BUILD)/tasam-train

.PHONY: all bins deps pytools test test-plain test-san test-tsan cuda-check fuzz fuzz-bins bench \
        bench-cluster clean run serve format format-check help reference reference-deps unicode-tables
all:
	@deploy/deps.sh
	@$(if $(CUDA_NOTE),echo "build: $(CUDA_NOTE)")
	@$(MAKE) --no-print-directory -j$(JOBS) bins

bins: $(BINS)

help:
	@echo "targets:"
	@echo "  make              install missing packages, build build/tasam, build/tasamd and"
	@echo "                    build/tasam-train"
	@echo "  make deps         install the Debian packages the build and tests need (deploy/deps.sh)"
	@echo "  make pytools      the pinned PyPI packages tests compare with, in build/venv"
	@echo "                    (tokenizers, schemathesis; make test runs it)"
	@echo "  make serve        build, fetch the ViT-H checkpoint if needed, run tasamd in the foreground"
	@echo "  make run          build, fetch the checkpoint if needed, segment IMAGE at POINTS into out/"
	@echo "  make test         every test: plain, ASan+UBSan, CUDA compile check, bounded fuzzing"
	@echo "  make test-plain   the tests on the normal build only"
	@echo "  make test-san     the tests under ASan+UBSan only"
	@echo "  make test-tsan    the server tests under ThreadSanitizer"
	@echo "  make cuda-check   compile and link the CUDA backend for CUDA_CHECK_ARCH (needs nvcc)"
	@echo "  make fuzz         build the libFuzzer targets and run each for FUZZ_SECONDS"
	@echo "  make bench        CPU (and GPU where present) benchmarks"
	@echo "  make bench-cluster  rate sweeps of 1 and 3 replicas behind HAProxy (bench/cluster_sweep.sh)"
	@echo "  make reference    compare with the official PyTorch SAM (installs Debian's torch)"
	@echo "  make format       clang-format every C/CUDA source; format-check: check only"
	@echo "  make unicode-tables  regenerate hypernet/unicode_tables.c from Hugging Face tokenizers"
	@echo "  make clean        remove build/"
	@echo "variables:"
	@echo "  CHECKPOINT=$(CHECKPOINT)   SAM checkpoint (.pth or safetensors) for serve/run"
	@echo "  LISTEN=$(LISTEN)   STATE_DIR=$(STATE_DIR)   TASAMD_ARGS='...' (extra tasamd options)"
	@echo "  IMAGE=$(IMAGE)   POINTS='$(POINTS)'   (make run: x,y,label;...)"
	@echo "  CUDA=auto|0|1 (now $(CUDA))   CUDA_ARCHS='$(CUDA_ARCHS)'   CUDA_CHECK_ARCH=$(CUDA_CHECK_ARCH)"
	@echo "  SAN=1   TSAN=1   FUZZ_SECONDS=$(FUZZ_SECONDS)   JOBS=$(JOBS)   BUILD=$(BUILD)"
	@echo "  TASAM_FIXTURES=dir (reference fixtures; default ../shared/fixtures)"

deps:
	@deploy/deps.sh

pytools:
	@deploy/pytools.sh build/venv

# The tokenizer's character data, asked of the tokenizers library itself
# (hypernet/wordpiece_tables.py); written to a temporary file first so a
# failure never leaves a half-written table.
unicode-tables: pytools
	@build/venv/bin/python3 hypernet/wordpiece_tables.py > build/unicode_tables.c.tmp
	@mv build/unicode_tables.c.tmp hypernet/unicode_tables.c
	@echo "hypernet/unicode_tables.c regenerated"

# Objects rebuild when the compiler command line changes (CUDA on/off, SAN,
# OPT): the stamp is rewritten only when its content differs.
CONFIG_SIG := $(CC) $(CFLAGS_ALL) | $(NVCC) $(NVCCFLAGS) | $(CUDA)
$(BUILD)/.config: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CONFIG_SIG)' | cmp -s - $@ || echo '$(CONFIG_SIG)' > $@
.PHONY: FORCE
FORCE:

$(BUILD)/obj/%.o: %.c $(BUILD)/.config
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(WEB_GEN): $(WEB_FILES) server/web/embed.sh
	@mkdir -p $(dir $@)
	@echo "  EMBED   server/web/ -> $@"
	@server/web/embed.sh $@ $(WEB_FILES)

$(WEB_OBJ): $(WEB_GEN) $(BUILD)/.config
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/obj/%.o: %.cu $(BUILD)/.config
	@mkdir -p $(dir $@)
	@echo "  NVCC    $<"
	@$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%_sm75.o: %_sm75.cu $(BUILD)/.config
	@mkdir -p $(dir $@)
	@echo "  NVCC    $< (compute_75)"
	@$(NVCC) $(NVCCFLAGS_SM75) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	@echo "  AR      $@"
	@ar rcs $@ $^

$(BUILD)/tasam: $(CLI_OBJ) $(LIB)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -pthread -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/tasamd: $(BUILD)/obj/server/main.o $(LIB)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -pthread -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/tasam-train: $(BUILD)/obj/train/main.o $(LIB)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -pthread -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -pthread -o $@ $^ $(LDLIBS_ALL)

# The LD_PRELOAD library the daemon tests use to make the cache's disk full
# or failing (tests/faultfs.c); never sanitized: it only forwards calls.
$(BUILD)/tests/faultfs.so: tests/faultfs.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) -std=c11 -O2 -g -fPIC -shared -Wall -Wextra -Werror -o $@ $< -ldl

$(BUILD)/bench/tasam-bench: $(TB_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -pthread -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -pthread -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/bin/%: $(BUILD)/obj/tests/fuzz/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -fsanitize=fuzzer -pthread -o $@ $^ $(LDLIBS_ALL)

# Tests: the plain build, the sanitizer build, the CUDA compile check, then
# bounded fuzzing. The last line printed is the total "N passed, N failed,
# N skipped" (tests/summarize.sh).
test: deps pytools
	@mkdir -p build
	@{ $(MAKE) --no-print-directory test-plain; $(MAKE) --no-print-directory test-san; \
	   $(MAKE) --no-print-directory cuda-check; $(MAKE) --no-print-directory fuzz; } 2>&1 | \
	   tee build/test.log; \
	 tests/summarize.sh build/test.log

test-plain:
	@$(MAKE) --no-print-directory -j$(JOBS) $(BINS) $(TEST_BIN) $(BUILD)/tests/faultfs.so \
	  $(BUILD)/bench/tasam-bench
	@tests/run.sh $(BUILD) plain || true
	@if $(MAKE) --no-print-directory format-check; then echo "format: 1 passed, 0 failed, 0 skipped"; \
	 else echo "format: 0 passed, 1 failed, 0 skipped"; fi

test-san:
	@$(MAKE) --no-print-directory -j$(JOBS) SAN=1 all-tests-san
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  tests/run.sh build/asan sanitizers || true

.PHONY: all-tests-san
all-tests-san: $(BINS) $(TEST_BIN) $(BUILD)/tests/faultfs.so $(BUILD)/bench/tasam-bench

# The server tests (tests/test_server*.c) under ThreadSanitizer, daemon
# included. A race stops the process that saw it (halt_on_error) and leaves
# its report in build/tsan/reports/, printed here and counted as a failure.
# TASAM_TEST_SLOW gives the tests' daemons the long deadlines an
# instrumented build needs.
TSAN_TESTS := $(patsubst tests/%.c,build/tsan/tests/%,$(wildcard tests/test_server*.c))
test-tsan:
	@$(MAKE) --no-print-directory -j$(JOBS) TSAN=1 all-tests-tsan
	@rm -rf build/tsan/reports && mkdir -p build/tsan/reports
	@TASAM_TEST_SLOW=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 \
	  log_path=$(CURDIR)/build/tsan/reports/tsan" tests/run.sh build/tsan tsan || true
	@if ls build/tsan/reports/tsan.* >/dev/null 2>&1; then cat build/tsan/reports/tsan.*; \
	   echo "tsan-races: 0 passed, 1 failed, 0 skipped (reports above)"; \
	 else echo "tsan-races: 1 passed, 0 failed, 0 skipped (none reported)"; fi

.PHONY: all-tests-tsan
all-tests-tsan: $(BINS) $(TSAN_TESTS)

# The CUDA sources compiled and linked (library, tasamd, the CUDA tests) for
# one architecture: what a machine without a GPU can check.
cuda-check:
	@if [ -z "$(NVCC)" ] || [ -z "$(CUDA_SRC)" ]; then \
	   echo "cuda-compile: 0 passed, 0 failed, 1 skipped (no nvcc)"; \
	 elif $(MAKE) --no-print-directory -j$(JOBS) CUDA=1 CUDA_ARCHS=$(CUDA_CHECK_ARCH) OPT=-O1 \
	      BUILD=build/cuda-check build/cuda-check/tasamd build/cuda-check/tests/test_cuda_ops \
	      build/cuda-check/tests/test_cuda_sam build/cuda-check/bench/bench_gpu; then \
	   echo "cuda-compile: 1 passed, 0 failed, 0 skipped (sm_$(CUDA_CHECK_ARCH))"; \
	 else echo "cuda-compile: 0 passed, 1 failed, 0 skipped"; fi

fuzz:
	@$(MAKE) --no-print-directory -j$(JOBS) FUZZ=1 fuzz-bins || true
	@tests/fuzz/run.sh $(FUZZ_SECONDS) build/fuzz/bin || true

fuzz-bins: $(FUZZ_BIN)

bench: $(BINS) $(BENCH_BIN)
	@bench/run.sh $(BUILD)

# The README's scale-out figures: local clusters of the fixture model on the
# CPU behind HAProxy, open-loop rate sweeps (several minutes).
bench-cluster: deps $(BUILD)/tasamd $(BUILD)/bench/tasam-bench
	@bench/cluster_sweep.sh $(BUILD)

# `make run`: the README's first command. Installs what is missing, builds,
# fetches and verifies the ViT-H checkpoint (unless CHECKPOINT names
# another), and segments IMAGE at POINTS into out/.
CHECKPOINT ?= checkpoints/sam_vit_h_4b8939.pth
IMAGE ?= deploy/example.png
POINTS ?= 330,330,1
run:
	@deploy/deps.sh
	@$(MAKE) --no-print-directory $(BUILD)/tasam
	@BUILD=$(BUILD) CHECKPOINT="$(CHECKPOINT)" IMAGE="$(IMAGE)" POINTS="$(POINTS)" \
	  TASAM_VIA="make run" deploy/run-example.sh

# `make reference`: tasam against the official PyTorch segment-anything on
# ViT-B-sized random weights and another photo, both checkpoint formats (not
# part of `make test`: it needs torch, about 1 GB of packages).
reference-deps:
	@deploy/deps.sh
	@dpkg-query -W -f='$${Status}\n' python3-torch python3-torchvision python3-venv 2>/dev/null | \
	  grep -c "install ok installed" | grep -q 3 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	   python3-torch python3-torchvision python3-venv python3-pil python3-numpy)
	@[ -x build/reference/venv/bin/python3 ] || /usr/bin/python3 -m venv --system-site-packages build/reference/venv
	@build/reference/venv/bin/python3 -c "import segment_anything" 2>/dev/null || \
	  build/reference/venv/bin/pip install -q --no-deps segment-anything

reference: reference-deps $(BUILD)/tasam $(BUILD)/bench/mkweights
	@tests/reference/compare.sh vit_b

# `make serve`: the main job. Installs what is missing, builds, fetches the
# checkpoint as `make run` does and runs tasamd in the foreground.
LISTEN ?= 127.0.0.1:8080
STATE_DIR ?= state
serve:
	@deploy/deps.sh
	@$(MAKE) --no-print-directory $(BUILD)/tasamd
	@BUILD=$(BUILD) CHECKPOINT="$(CHECKPOINT)" LISTEN="$(LISTEN)" STATE_DIR="$(STATE_DIR)" \
	  TASAMD_ARGS="$(TASAMD_ARGS)" TASAM_VIA="make serve" deploy/serve.sh

# Every C and CUDA source but generated tables follows .clang-format;
# format-check (part of test-plain) fails on any difference.
FORMAT_FILES = $(filter-out hypernet/unicode_tables.c,$(shell git ls-files '*.c' '*.h' '*.cu' '*.cuh' 2>/dev/null))
format:
	@clang-format -i $(FORMAT_FILES)

format-check:
	@bad=$$(for f in $(FORMAT_FILES); do clang-format --dry-run -Werror $$f >/dev/null 2>&1 || echo $$f; done); \
	 if [ -n "$$bad" ]; then echo "  FAIL format-check: not clang-formatted (run make format):"; \
	   echo "$$bad" | sed 's/^/    /'; exit 1; else echo "ok     format-check"; fi

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
