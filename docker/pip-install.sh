#!/bin/sh
# pip install inside the image build: from the package registry, or, when the build
# argument PIP_SOURCE names a wheelhouse (a URL), from it and nothing else (offline build).
set -e
if [ -n "${PIP_SOURCE:-}" ]; then
    host=$(echo "$PIP_SOURCE" | sed -E 's#^[a-z]+://([^/:]+).*#\1#')
    exec python -m pip install --no-index --find-links "$PIP_SOURCE" --trusted-host "$host" "$@"
fi
exec python -m pip install "$@"
