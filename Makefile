# tasam build. `make` builds build/tasam and build/tasamd (and the CUDA
# backend where nvcc is found); `make test` builds and runs every test, plain
# and under ASan+UBSan, then the fuzzers for a bounded time; `make bench`
# runs the benchmarks. `make deps` installs what all of that needs.

CC      ?= cc
BUILD   ?= build
OPT     ?= -O3 -march=x86-64-v2 -mtune=generic
SAN     ?= 0
CUDA    ?= auto
FUZZ_SECONDS ?= 15

CSTD     = -std=c11 -D_GNU_SOURCE
WARN     = -Wall -Wextra -Werror -Wno-unused-parameter
INCLUDES = -I. -I/usr/include/x86_64-linux-gnu/openblas-pthread
CFLAGS_ALL = $(CSTD) $(WARN) $(OPT) -g -pthread -fno-strict-aliasing -fno-trapping-math $(INCLUDES) $(CFLAGS)
LDLIBS_ALL = -lopenblas -ljpeg -lpng -lz -ljansson -lmicrohttpd -luv -lsqlite3 -lm -lpthread $(LDLIBS)

ifeq ($(SAN),1)
  CC := clang
  BUILD := build/asan
  OPT := -O1 -fno-omit-frame-pointer
  CFLAGS_ALL += -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
  CUDA := 0
endif

# CUDA backend: built where nvcc is found, never required.
CUDA_SRC := $(wildcard engine/cuda/*.cu)
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(CUDA),auto)
  ifneq ($(and $(NVCC),$(CUDA_SRC)),)
    CUDA := 1
  else
    CUDA := 0
  endif
endif
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_ARCHS ?= 75 80 86 89 90
NVCCFLAGS = -O3 -std=c++17 -I. -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter,-fPIC \
            $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
            -gencode arch=compute_90,code=compute_90

ENGINE_SRC   := $(wildcard engine/*.c)
HYPERNET_SRC := $(wildcard hypernet/*.c)
ADAPTERS_SRC := $(wildcard adapters/*.c)
SERVER_SRC   := $(filter-out server/main.c,$(wildcard server/*.c))
CLI_SRC      := $(wildcard cli/*.c)
CLI_OBJ      := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)

ifeq ($(CUDA),1)
  CFLAGS_ALL += -DENG_HAVE_CUDA=1 -I$(CUDA_HOME)/include
  LDLIBS_ALL += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
  CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o)
else
  CUDA_OBJ :=
endif

LIB_SRC  := $(ENGINE_SRC) $(HYPERNET_SRC) $(ADAPTERS_SRC) $(SERVER_SRC)
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(CUDA_OBJ)
LIB      := $(BUILD)/libtasam.a

TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)

BINS := $(BUILD)/tasam $(if $(wildcard server/main.c),$(BUILD)/tasamd)

.PHONY: all deps test test-plain test-san fuzz bench clean run serve format help reference reference-deps
all: $(BINS)

help:
	@echo "make            build build/tasam (and build/tasamd)"
	@echo "make deps       install the Debian packages the build and tests need"
	@echo "make serve      fetch the ViT-H checkpoint if needed and run tasamd on 127.0.0.1:8080"
	@echo "make run        fetch the ViT-H checkpoint if needed and segment an example image"
	@echo "make test       every test: plain, ASan+UBSan, then bounded fuzzing"
	@echo "make bench      CPU (and GPU where present) benchmarks"
	@echo "variables: CUDA=0|1|auto SAN=1 FUZZ_SECONDS=$(FUZZ_SECONDS) TASAM_FIXTURES=dir"

deps:
	@deploy/deps.sh

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

$(BUILD)/obj/%.o: %.cu $(BUILD)/.config
	@mkdir -p $(dir $@)
	@echo "  NVCC    $<"
	@$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

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

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -pthread -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	@$(CC) $(LDFLAGS) -pthread -o $@ $^ $(LDLIBS_ALL)

# Tests: the plain build, then the sanitizer build, then bounded fuzzing. The
# last line printed is the total "N passed, N failed, N skipped".
test: deps
	@mkdir -p build
	@{ $(MAKE) --no-print-directory test-plain; $(MAKE) --no-print-directory test-san; \
	   $(MAKE) --no-print-directory fuzz; } 2>&1 | tee build/test.log; \
	 tests/summarize.sh build/test.log

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
test-plain:
	@$(MAKE) --no-print-directory -j$(JOBS) $(BINS) $(TEST_BIN) $(BUILD)/bench/tasam-bench
	@tests/run.sh $(BUILD) plain || true

test-san:
	@$(MAKE) --no-print-directory -j$(JOBS) SAN=1 all-tests-san
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  tests/run.sh build/asan sanitizers || true

.PHONY: all-tests-san
all-tests-san: $(BINS) $(TEST_BIN) $(BUILD)/bench/tasam-bench

fuzz:
	@tests/fuzz/run.sh $(FUZZ_SECONDS) || true

bench: $(BINS) $(BENCH_BIN)
	@bench/run.sh $(BUILD)

# `make run`: the README's first command. Installs what is missing, builds,
# fetches and verifies the ViT-H checkpoint (unless CHECKPOINT names
# another), and segments IMAGE at POINTS into out/.
CHECKPOINT ?= checkpoints/sam_vit_h_4b8939.pth
IMAGE ?= deploy/example.png
POINTS ?= 330,330,1
run:
	@deploy/deps.sh
	@$(MAKE) --no-print-directory $(BUILD)/tasam
	@BUILD=$(BUILD) CHECKPOINT="$(CHECKPOINT)" IMAGE="$(IMAGE)" POINTS="$(POINTS)" deploy/run-example.sh

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
	  TASAMD_ARGS="$(TASAMD_ARGS)" deploy/serve.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
