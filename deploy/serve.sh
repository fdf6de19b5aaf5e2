#!/usr/bin/env bash
# deploy/serve.sh: the README's main command (`make serve`). Starts tasamd in
# the foreground on LISTEN (default 127.0.0.1:8080) with CHECKPOINT (default
# the official ViT-H file, downloaded and verified on first use) and its
# cache in STATE_DIR. Extra tasamd options go in TASAMD_ARGS. Ctrl-C (SIGINT)
# or SIGTERM drains in-flight requests and stops it.
set -eu
build=${BUILD:-build}
ckpt=${CHECKPOINT:-checkpoints/sam_vit_h_4b8939.pth}
listen=${LISTEN:-127.0.0.1:8080}
state=${STATE_DIR:-state}
if [ "$ckpt" = "checkpoints/sam_vit_h_4b8939.pth" ]; then
    deploy/fetch-checkpoint.sh "$ckpt" || exit 1
fi
echo "serve: tasamd on http://$listen (checkpoint $ckpt, cache in $state/)" >&2
echo "serve: try: curl -s -F image=@deploy/example.png -F 'request={\"points\":[[330,330,1]]}' http://$listen/v1/segment" >&2
# shellcheck disable=SC2086
exec "$build/tasamd" --checkpoint "$ckpt" --listen "$listen" --state-dir "$state" ${TASAMD_ARGS:-}
