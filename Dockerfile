# Dockerfile: the tasam image (tasamd, tasam, tasam-train, tasam-bench) on
# NVIDIA's CUDA runtime, as deploy/k8s/ runs it.
#
#   docker build -t tasam/tasamd:0.1.0 .
#   docker run --gpus all -p 8080:8080 -v /srv/tasam/models:/var/lib/tasam/models:ro \
#       tasam/tasamd:0.1.0 --checkpoint /var/lib/tasam/models/sam_vit_h_4b8939.pth
#
# Stage 1 builds with nvcc for the GPU generations in CUDA_ARCHS (T4 to H100,
# plus PTX of the newest for later ones); stage 2 holds the binaries and the
# shared libraries they need, runs as an unprivileged user (uid 10001) and
# keeps its state under /var/lib/tasam (mount a volume there). The weights
# are not in the image: deploy/k8s/setup-job.yaml (or the fetch scripts
# copied to /usr/local/share/tasam/) put them on a volume.
ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG CUDA_ARCHS="75 80 86 89 90"
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        make gcc pkg-config libopenblas-pthread-dev libjpeg-turbo8-dev libpng-dev zlib1g-dev \
        libjansson-dev libmicrohttpd-dev libuv1-dev libsqlite3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# `bins` builds without running deploy/deps.sh (the packages are above).
RUN make -j"$(nproc)" CUDA=1 CUDA_ARCHS="${CUDA_ARCHS}" bins build/bench/tasam-bench

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenblas0-pthread libjpeg-turbo8 libpng16-16 zlib1g libjansson4 libmicrohttpd12 \
        libuv1 libsqlite3-0 curl ca-certificates python3 python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tasam \
    && useradd --system --uid 10001 --gid tasam --home-dir /var/lib/tasam \
        --shell /usr/sbin/nologin tasam \
    && mkdir -p /var/lib/tasam/state /var/lib/tasam/models /var/lib/tasam/hypernet /etc/tasam \
    && chown -R tasam:tasam /var/lib/tasam
COPY --from=build /src/build/tasamd /src/build/tasam /src/build/tasam-train \
        /src/build/bench/tasam-bench /usr/local/bin/
COPY deploy/fetch-checkpoint.sh deploy/fetch-text-model.sh /usr/local/share/tasam/
COPY deploy/tasamd.conf.example /etc/tasam/tasamd.conf.example
COPY LICENSE README.md /usr/local/share/doc/tasam/
# Listen on every interface inside the container; the cache on the volume.
# HOME for pip in the setup Job (the root file system is read-only there).
ENV TASAMD_LISTEN=0.0.0.0:8080 \
    TASAMD_STATE_DIR=/var/lib/tasam/state \
    HOME=/tmp
USER 10001:10001
WORKDIR /var/lib/tasam
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s \
    CMD curl -sf -o /dev/null http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["tasamd"]
