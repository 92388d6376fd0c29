#!/usr/bin/env bash
# A private Docker engine for machines without systemd (CI, test machines), and
# undoing what it changes on the host when it stops.
#
#   docker/engine.sh start DIR     start dockerd with its socket, data and state under DIR
#   export DOCKER_HOST=unix://DIR/docker.sock
#   docker/engine.sh stop DIR      stop it (containers too) and restore the host
#   docker/engine.sh stop DIR --purge   ... and delete DIR (images included)
#
# dockerd changes the host: it sets net.ipv4.ip_forward=1, creates the nftables
# tables "ip nat" and "ip filter" (through iptables-nft; FORWARD policy DROP)
# and a docker0 bridge. `start` records which of these existed before; `stop`
# removes only what dockerd added and puts ip_forward back.
# Needs root and Debian's docker.io (20.10) + nftables packages.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR [--purge]" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")
sock="$dir/docker.sock"

tables() { nft list tables 2>/dev/null || true; }

case "$cmd" in
start)
    mkdir -p "$dir"
    if [ -f "$dir/dockerd.pid" ] && kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null; then
        echo "dockerd already running (pid $(cat "$dir/dockerd.pid")); DOCKER_HOST=unix://$sock" >&2
        exit 0
    fi
    if [ ! -f "$dir/host-before" ]; then  # keep the first record if a previous stop was skipped
        {
            echo "ip_forward=$(sysctl -n net.ipv4.ip_forward)"
            echo "docker0=$(ip link show docker0 >/dev/null 2>&1 && echo present || echo absent)"
            tables | sed 's/^table /table=/'
        } > "$dir/host-before"
    fi
    # Short paths: containerd's sockets live under --exec-root (unix sockets are limited to 108 bytes).
    exec_root=$(mktemp -d /tmp/fal-dockerd-exec.XXXXXX)
    echo "$exec_root" > "$dir/exec-root"
    dockerd --host "unix://$sock" --data-root "$dir/data" --exec-root "$exec_root" \
        --pidfile "$dir/dockerd.pid" > "$dir/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
        if docker -H "unix://$sock" info >/dev/null 2>&1; then
            echo "dockerd ready; export DOCKER_HOST=unix://$sock" >&2
            exit 0
        fi
        sleep 0.5
    done
    echo "dockerd did not start within 30 s; its log:" >&2
    tail -20 "$dir/dockerd.log" >&2
    exit 1
    ;;
stop)
    exec_root=""
    [ -f "$dir/exec-root" ] && exec_root=$(cat "$dir/exec-root")
    if [ -f "$dir/dockerd.pid" ]; then
        pid=$(cat "$dir/dockerd.pid")
        # Only our dockerd: a pid left by one that died may belong to another process by now.
        if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "unix://$sock"; then
            # SIGTERM: dockerd stops its containers (10 s grace each) and its containerd.
            kill "$pid"
            for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && { echo "dockerd $pid did not stop; killing it" >&2; kill -9 "$pid"; }
        fi
        rm -f "$dir/dockerd.pid"
    fi
    # A dockerd that was killed (not stopped) leaves its containerd, container shims and their
    # containers running, and their mounts: find them by this engine's own folders, stop them by id.
    if [ -n "$exec_root" ]; then
        for p in $(pgrep -f -- "$exec_root/" || true); do
            for c in $(pgrep -P "$p" || true); do kill -9 "$c" 2>/dev/null || true; done
            kill -9 "$p" 2>/dev/null || true
        done
    fi
    for m in $(awk -v a="$dir/" -v b="${exec_root:-/nonexistent}/" \
                   'index($2, a) == 1 || index($2, b) == 1 || $2 == substr(b, 1, length(b) - 1) {print $2}' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    if [ -f "$dir/host-before" ]; then
        before=$(cat "$dir/host-before")
        for t in "ip nat" "ip filter" "ip6 nat" "ip6 filter"; do
            if tables | grep -qx "table $t" && ! grep -qx "table=$t" <<<"$before"; then
                nft delete table $t
            fi
        done
        if grep -qx "docker0=absent" <<<"$before" && ip link show docker0 >/dev/null 2>&1; then
            ip link delete docker0
        fi
        sysctl -q -w "net.ipv4.ip_forward=$(sed -n 's/^ip_forward=//p' <<<"$before")"
        rm -f "$dir/host-before"
    fi
    if [ -n "$exec_root" ]; then
        rm -rf "$exec_root"
        rm -f "$dir/exec-root"
    fi
    if [ "${3:-}" = "--purge" ]; then
        rm -rf "$dir"
    fi
    echo "dockerd stopped; host restored" >&2
    ;;
*) usage ;;
esac
