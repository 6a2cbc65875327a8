#!/usr/bin/env bash
# Build the images on a machine that reaches Debian's and PyPI's package registries but no image
# registry: bookworm bases made by mmdebstrap and `docker import`, and the proxy image from
# deploy/Dockerfile with a host-built wheelhouse. Run from the repository root, with DOCKER_HOST
# naming an engine (deploy/local-images/engine.sh finds or starts one).
#   build.sh [IMAGE]   IMAGE defaults to oci-referrers-proxy:dev
set -euo pipefail

image=${1:-oci-referrers-proxy:dev}
pip=${PIP:-pip}
prefix=oci-referrers-proxy-local
here=deploy/local-images
wheels=deploy/wheelhouse
# Match Debian bookworm's interpreter: a marker like python_full_version < '3.11.3' is decided
# by the Python that runs pip, not by --python-version, so those wheels are named below.
python_version=3.11.2
arch=$(uname -m)

# base NAME PACKAGES HOOK [docker import --change ...]: a bookworm image holding PACKAGES, HOOK
# run on its root filesystem ($1), rebuilt only when its recipe (these arguments and
# registry.yml) changes.
base() {
  local name=$1 packages=$2 hook=$3 recipe
  shift 3
  recipe=$(cat - "$here/registry.yml" <<<"$name $packages $hook $*" | sha256sum | cut -c1-16)
  if [ "$(docker image inspect -f '{{index .Config.Labels "recipe"}}' "$prefix/$name" 2>/dev/null)" = "$recipe" ]; then
    return
  fi
  local started=$SECONDS tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  mmdebstrap --quiet --variant=essential --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/cache/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    --customize-hook="$hook" bookworm "$tmp/rootfs.tar"
  docker import --change "LABEL recipe=$recipe" "$@" "$tmp/rootfs.tar" "$prefix/$name" >/dev/null
  echo "built $prefix/$name in $((SECONDS - started)) s"
}

base python:bookworm python3,python3-venv,python-is-python3,ca-certificates true \
  --change 'CMD ["python"]'
# Debian's own config asks for htpasswd logins; this one is registry:2.8's, with deletes on.
base registry:2.8 docker-registry,ca-certificates \
  "cp $PWD/$here/registry.yml \"\$1\"/etc/docker/registry/config.yml" \
  --change 'USER docker-registry' --change 'WORKDIR /var/lib/docker-registry' \
  --change 'ENTRYPOINT ["docker-registry", "serve"]' \
  --change 'CMD ["/etc/docker/registry/config.yml"]'
base redis:7 redis-server true \
  --change 'USER redis' --change 'WORKDIR /var/lib/redis' \
  --change 'ENTRYPOINT ["redis-server"]' \
  --change 'CMD ["--protected-mode", "no", "--dir", "/var/lib/redis"]'

started=$SECONDS
find "$wheels" -name '*.whl' -delete
platforms=()
for tag in manylinux_2_28 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
  platforms+=(--platform "${tag}_$arch")
done
"$pip" download --quiet --disable-pip-version-check --only-binary=:all: --dest "$wheels" \
  --python-version "$python_version" --implementation cp --abi cp311 "${platforms[@]}" \
  . 'setuptools>=68' 'async-timeout>=4.0.3'
echo "wheelhouse ready in $((SECONDS - started)) s"

started=$SECONDS
build_args=(-f deploy/Dockerfile --build-arg PYTHON_IMAGE="$prefix/python:bookworm"
  --build-arg PIP_INSTALL_ARGS="--no-index --find-links /wheels")
# The build stage is tagged too: untagged, the prune below would take it, and with it the cache
# that lets an unchanged tree rebuild in seconds.
docker build --quiet "${build_args[@]}" --target build -t "$image-build" . >/dev/null
docker build --quiet "${build_args[@]}" -t "$image" . >/dev/null
echo "built $image in $((SECONDS - started)) s ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
# Each rebuild leaves the previous images untagged; vfs keeps every one whole on disk.
docker image prune --force >/dev/null
