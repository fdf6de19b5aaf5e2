#!/usr/bin/env bash
# deploy/k8s/render-haproxy-config.sh [--check]: write
# deploy/k8s/haproxy-config.yaml, the ConfigMap that carries
# deploy/haproxy.cfg and deploy/k8s/haproxy-servers.cfg into the HAProxy
# pods, so that the Kubernetes fleet runs the very file the local cluster
# and the tests run. --check compares instead of writing (make test runs it)
# and exits 1 when the checked-in ConfigMap is out of date.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/haproxy-config.yaml"
render() {
    cat <<'HEAD'
# deploy/k8s/haproxy-config.yaml: written by deploy/k8s/render-haproxy-config.sh
# from deploy/haproxy.cfg and deploy/k8s/haproxy-servers.cfg; edit those and
# run the script (make test fails while this file is out of date).
apiVersion: v1
kind: ConfigMap
metadata:
  name: tasam-haproxy
  namespace: tasam
  labels:
    app.kubernetes.io/name: tasam-haproxy
    app.kubernetes.io/part-of: tasam
data:
HEAD
    local name file
    for name in haproxy.cfg servers.cfg; do
        case $name in
        haproxy.cfg) file="$here/../haproxy.cfg" ;;
        servers.cfg) file="$here/haproxy-servers.cfg" ;;
        esac
        echo "  $name: |"
        sed 's/^\(.\)/    \1/' "$file"
    done
}
if [ "${1-}" = "--check" ]; then
    if render | cmp -s - "$out"; then
        echo "render-haproxy-config: $out is up to date"
    else
        echo "render-haproxy-config: $out is out of date: run deploy/k8s/render-haproxy-config.sh" >&2
        exit 1
    fi
else
    render >"$out"
    echo "render-haproxy-config: wrote $out"
fi
