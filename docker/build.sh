#!/usr/bin/env bash
# Build the fal-flower image from a clean machine (Docker 20.10's classic builder is enough).
#
#   docker/build.sh                       FROM python:3.11-slim, dependencies from the registry
#   docker/build.sh --debian-base         FROM fal-base:bookworm, bootstrapped once from Debian
#                                         packages with mmdebstrap (no container registry needed)
#   docker/build.sh --host-ca             trust this host's local CAs while building
#                                         (a TLS-inspecting proxy re-signs outbound TLS)
#   docker/build.sh --ca FILE.crt         ... or this CA certificate (repeatable)
#   docker/build.sh --wheelhouse          offline build: `pip wheel` the wheels on the host
#                                         (its pip cache makes that fast) and serve them to the
#                                         build over the docker0 bridge; the image build itself
#                                         reaches no registry
#   docker/build.sh --wheelhouse-dir DIR  the same with wheels already in DIR
#   --extras NAME[,NAME]                  also install these optional dependencies of pyproject.toml,
#                                         e.g. label-studio (the SDK a site's ClientApp needs for
#                                         oracle="label-studio")
#   --tag NAME (default fal-flower:latest), --base IMAGE, --uid UID (default 1000)
#
# Prints how long it took. Needs docker (DOCKER_HOST as usual); --debian-base needs root
# and mmdebstrap; --wheelhouse needs the project's venv (.venv) or a python3 (>= 3.11) with pip.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=fal-flower:latest
base=python:3.11-slim
debian_base=""
uid=1000
extras=""
wheelhouse=""
cas=()
while [ $# -gt 0 ]; do
    case "$1" in
    --tag) tag=$2; shift ;;
    --base) base=$2; shift ;;
    --debian-base) debian_base=fal-base:bookworm ;;
    --uid) uid=$2; shift ;;
    --extras) extras=$2; shift ;;
    --host-ca) for f in /usr/local/share/ca-certificates/*.crt; do [ -e "$f" ] && cas+=("$f"); done ;;
    --ca) cas+=("$2"); shift ;;
    --wheelhouse) wheelhouse=download ;;
    --wheelhouse-dir) wheelhouse=$(realpath "$2"); shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

start=$(date +%s)
export DOCKER_BUILDKIT=0  # Debian's docker.io has no BuildKit; the classic builder is enough
server_pid=""
workdir=$(mktemp -d)
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    find docker/ca -name '*.crt' -delete
    rm -rf "$workdir" docker/.requirements.txt
}
trap cleanup EXIT

if [ -n "$debian_base" ]; then
    base=$debian_base
    if ! docker image inspect "$base" >/dev/null 2>&1; then
        echo "[build] bootstrapping $base from Debian packages (mmdebstrap)" >&2
        mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm - | docker import --change 'CMD ["python3"]' - "$base"
        echo "[build] $base ready after $(( $(date +%s) - start )) s" >&2
    fi
fi

# Extra CAs: copied into the build context for this build only (never committed).
find docker/ca -name '*.crt' -delete
for f in "${cas[@]}"; do
    cp "$f" "docker/ca/$(basename "${f%.*}").crt"
done

# The dependency list alone (plus the chosen extras'), so the image's dependency layer is keyed on
# it, not on all of pyproject.toml.
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
FAL_EXTRAS=$extras "$py" - > docker/.requirements.txt <<'PY'
import os, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"])
for name in filter(None, os.environ["FAL_EXTRAS"].split(",")):
    if name not in project.get("optional-dependencies", {}):
        sys.exit(f"--extras: pyproject.toml has no optional dependencies named {name!r} "
                 f"(it has {', '.join(project.get('optional-dependencies', {}))})")
    reqs += project["optional-dependencies"][name]
print("\n".join(reqs))
PY

pip_source=""
if [ -n "$wheelhouse" ]; then
    if [ "$wheelhouse" = download ]; then
        wheelhouse=$workdir/wheels
        # pip wheel: the registry's wheels as they are, and a wheel built here from any package the
        # registry has only as a source archive (bmdal-reg), so the image installs wheels only
        "$py" -m pip wheel --quiet --wheel-dir "$wheelhouse" \
            -r docker/.requirements.txt pip "setuptools>=77"
        echo "[build] wheels downloaded after $(( $(date +%s) - start )) s ($(du -sh "$wheelhouse" | cut -f1))" >&2
    fi
    # Serve the wheelhouse on the bridge's gateway address, where build containers reach the host.
    gateway=$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1)
    [ -n "$gateway" ] || gateway=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
    [ -n "$gateway" ] || { echo "[build] cannot find the docker0 bridge address to serve the wheelhouse on" >&2; exit 1; }
    # A fixed URL: build arguments are part of the layer cache key.
    port=${FAL_WHEELHOUSE_PORT:-8765}
    python3 -m http.server --bind "$gateway" --directory "$wheelhouse" "$port" >/dev/null 2>&1 &
    server_pid=$!
    pip_source="http://$gateway:$port/"
    # Wait until it serves this wheelhouse (a slow start, or another server on the port, fails the build's pip).
    # (a glob, not `ls | head -1`: under pipefail head's early exit can kill ls with SIGPIPE, exit 141)
    wheels=("$wheelhouse"/*.whl)
    [ -e "${wheels[0]}" ] || { echo "[build] no wheels in $wheelhouse" >&2; exit 1; }
    probe="$pip_source$(basename "${wheels[0]}")"
    served=""
    for _ in $(seq 1 60); do
        kill -0 "$server_pid" 2>/dev/null || break
        if python3 -c "import urllib.request; urllib.request.urlopen('$probe', timeout=2).close()" 2>/dev/null; then
            served=1; break
        fi
        sleep 0.5
    done
    [ -n "$served" ] || { echo "[build] could not serve the wheelhouse on $pip_source (port busy? set FAL_WHEELHOUSE_PORT)" >&2; exit 1; }
fi

docker build --file docker/Dockerfile --tag "$tag" \
    --build-arg "BASE_IMAGE=$base" --build-arg "FAL_UID=$uid" --build-arg "PIP_SOURCE=$pip_source" .
echo "[build] $tag from $base built in $(( $(date +%s) - start )) s" \
     "($(docker image inspect "$tag" --format '{{.Size}}' | awk '{printf "%.1f GB", $1/1e9}'))" >&2
