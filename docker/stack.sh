#!/usr/bin/env bash
# Run the compose deployment (docker/compose.yml) with TLS and SuperNode authentication.
#
#   docker/stack.sh certs [--host NAME_OR_IP ...]   CA, SuperLink certificate, 3 SuperNode key pairs
#                                                   (in $FAL_CERTS, default docker/certs; kept if present)
#   docker/stack.sh up [N]        start the SuperLink, register supernode-0..N-1 (default 3), start them
#   docker/stack.sh register I    register supernode-I's public key
#   docker/stack.sh flwr ARGS...  flwr in the cli container, e.g.
#                                 docker/stack.sh flwr run /app --stream --run-config 'num-cycles=1'
#   docker/stack.sh down [-v]     stop everything (-v: delete the ledger and result volumes too)
#
# Environment: FAL_IMAGE (fal-flower:latest), FAL_CERTS, FAL_SUPERLINK_PUBLISH (9093),
# FAL_PROJECT (compose project name, default fal), FAL_UID (1000: the image user that must
# read the keys), COMPOSE (default: docker-compose, else "docker compose").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export FAL_IMAGE=${FAL_IMAGE:-fal-flower:latest}
export FAL_CERTS=${FAL_CERTS:-$here/certs}
project=${FAL_PROJECT:-fal}
uid=${FAL_UID:-1000}
if [ -z "${COMPOSE:-}" ]; then
    if command -v docker-compose >/dev/null; then COMPOSE=docker-compose; else COMPOSE="docker compose"; fi
fi
compose() { $COMPOSE --project-name "$project" --file "$here/compose.yml" "$@"; }

certs() {
    local hosts=(--host superlink)
    while [ $# -gt 0 ]; do
        case "$1" in --host) hosts+=(--host "$2"); shift ;; *) echo "unknown option $1" >&2; exit 2 ;; esac
        shift
    done
    if [ -f "$FAL_CERTS/superlink/superlink.crt" ]; then
        echo "[stack] $FAL_CERTS already holds certificates; remove it to make new ones" >&2
        return 0
    fi
    mkdir -p "$FAL_CERTS"
    # Made inside the image (fal-certs, Python cryptography), owned by the image's user.
    docker run --rm --user 0 --volume "$FAL_CERTS:/out" --entrypoint sh "$FAL_IMAGE" -c "
        set -e
        python -m launcher.certs superlink /out/ca ${hosts[*]}
        mkdir -p /out/superlink /out/public
        cp /out/ca/ca.crt /out/ca/superlink.crt /out/ca/superlink.key /out/superlink/
        for i in 0 1 2; do
            python -m launcher.certs supernode /out/supernode-\$i supernode-\$i
            cp /out/ca/ca.crt /out/supernode-\$i/
            cp /out/supernode-\$i/supernode-\$i.pub /out/public/
        done
        chown -R $uid /out/superlink /out/supernode-0 /out/supernode-1 /out/supernode-2 /out/public
    "
    echo "[stack] certificates in $FAL_CERTS (the CA key stays in $FAL_CERTS/ca)" >&2
}

wait_superlink() {
    for _ in $(seq 1 60); do
        if compose run --rm cli flwr supernode list >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "[stack] the SuperLink did not answer over TLS within 60 s:" >&2
    compose logs --tail 30 superlink >&2
    return 1
}

register() {
    compose run --rm cli flwr supernode register "/keys/supernode-$1.pub" --name "supernode-$1"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
certs) certs "$@" ;;
up)
    n=${1:-3}
    start=$(date +%s)
    compose up -d superlink
    wait_superlink
    nodes=()
    for i in $(seq 0 $((n - 1))); do
        register "$i"
        nodes+=("supernode-$i")
    done
    compose up -d "${nodes[@]}"
    echo "[stack] SuperLink + ${#nodes[@]} SuperNodes started in $(( $(date +%s) - start )) s" >&2
    ;;
register) register "$1" ;;
flwr) compose run --rm cli flwr "$@" ;;
down) compose down --remove-orphans "$@" ;;
*) sed -n '2,16p' "$0"; exit 2 ;;
esac
