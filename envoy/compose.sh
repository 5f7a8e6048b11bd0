#!/usr/bin/env bash
# The compose stack without a registry, with Podman: envoy/docker-compose.yaml
# plus envoy/docker-compose.local.yaml, every image built here FROM scratch.
#
#   envoy/compose.sh build     stage the image folders and build the images
#   envoy/compose.sh up        start the stack, wait until it serves
#   envoy/compose.sh examples  print curl commands that work against it
#   envoy/compose.sh down      remove its containers (and, with
#                              ERP_COMPOSE_RMI=1, its images)
#
# `make compose-up` / `make compose-down` run these; the compose test runs
# them with its own project name, tag and free ports.
#
# Variables: ENVOY_PORT (10000), ENVOY_ADMIN_PORT (9901), IDP_PORT (9080),
# ECHO_PORT (9081); ERP_COMPOSE_PROJECT (erp-edge), ERP_COMPOSE_TAG (local),
# ERP_COMPOSE_RUN (.run/compose: the CA and the rendered Envoy configuration),
# ERP_COMPOSE_CONTEXT (target/compose), ENVOY_CONFIG (rendered for the
# ports when unset), PODMAN_COMPOSE (.venv/bin/podman-compose).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export ENVOY_PORT=${ENVOY_PORT:-10000} ENVOY_ADMIN_PORT=${ENVOY_ADMIN_PORT:-9901}
export IDP_PORT=${IDP_PORT:-9080} ECHO_PORT=${ECHO_PORT:-9081}
export ERP_COMPOSE_TAG=${ERP_COMPOSE_TAG:-local}
export ERP_COMPOSE_RUN=$(realpath -m "${ERP_COMPOSE_RUN:-.run/compose}")
export ERP_COMPOSE_CONTEXT=$(realpath -m "${ERP_COMPOSE_CONTEXT:-target/compose}")
export ERP_EDGE_WASM=$(realpath -m "${ERP_EDGE_WASM:-target/wasm32-unknown-unknown/release/erp_edge_validator.wasm}")
project=${ERP_COMPOSE_PROJECT:-erp-edge}
devstack_bin=target/debug/erp-devstack
envoy_bin=$(ls .venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -1 || true)

# Debian's podman 4.3 with runc refuses to raise rlimits past the shell's
# hard limits; give containers limits they can have.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  mkdir -p "$ERP_COMPOSE_RUN"
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ] && nofile=65536
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=4096:4096"]\n' "$nofile" "$nofile" \
    > "$ERP_COMPOSE_RUN/containers.conf"
  export CONTAINERS_CONF=$ERP_COMPOSE_RUN/containers.conf
fi

compose() {
  "${PODMAN_COMPOSE:-.venv/bin/podman-compose}" -p "$project" --in-pod false \
    -f envoy/docker-compose.yaml -f envoy/docker-compose.local.yaml "$@"
}

die() { echo "compose.sh: $*" >&2; exit 1; }

# One image folder: the binary at /usr/local/bin and the files ldd names.
stage() { # stage DIR BINARY NAME CONTAINERFILE
  local dir=$1 bin=$2 name=$3
  [ -x "$bin" ] || die "$bin not found: run \`make build venv\`"
  rm -rf "$dir" && mkdir -p "$dir/rootfs/usr/local/bin"
  cp "$bin" "$dir/rootfs/usr/local/bin/$name"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$dir/rootfs$(dirname "$lib")"
    cp -L "$lib" "$dir/rootfs$lib"
  done
  cp "$4" "$dir/Containerfile"
}

# Fails naming the variable when a port is taken.
check_port() { # check_port VAR SERVICE
  local port=${!1}
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "$2 cannot listen on 127.0.0.1:$port: something already listens there; set $1 to a free port (e.g. $1=$((port + 1000)))"
  fi
}

logs() { compose logs "$1" 2>&1 | tail -40 >&2 || true; }

running() { # running SERVICE: its container is up
  [ "$(podman inspect -f '{{.State.Running}}' "${project}_$1_1" 2>/dev/null)" = true ]
}

wait_for() { # wait_for SERVICE WHAT COMMAND...
  local service=$1 what=$2; shift 2
  for _ in $(seq 1 300); do
    "$@" && return 0
    running "$service" || { logs "$service"; die "$service stopped before $what"; }
    sleep 0.1
  done
  logs "$service"; die "$service: no $what in 30 s"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready")" = 200 ]; }
# The filter has fetched the emulator's signing keys at least once.
have_keys() {
  curl -s "http://127.0.0.1:$ENVOY_ADMIN_PORT/stats?filter=erp_edge_validator.jwks_fetches$" | grep -q ': [1-9]'
}

case "${1:-}" in
  build)
    [ -n "$envoy_bin" ] || die "no Envoy in .venv: run \`make venv\`"
    stage "$ERP_COMPOSE_CONTEXT/envoy" "$envoy_bin" envoy envoy/Containerfile.local
    stage "$ERP_COMPOSE_CONTEXT/devstack" "$devstack_bin" erp-devstack devstack/Containerfile.local
    # No intermediate images: `down` with ERP_COMPOSE_RMI=1 leaves none behind.
    compose --podman-build-args=--layers=false build
    podman images --filter "reference=localhost/erp-*:$ERP_COMPOSE_TAG" --format 'image {{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}'
    ;;
  up)
    [ -f "$ERP_EDGE_WASM" ] || die "$ERP_EDGE_WASM not found: run \`make build\`"
    check_port IDP_PORT "the identity service emulator"
    check_port ECHO_PORT "the echo upstream"
    check_port ENVOY_PORT "Envoy's listener"
    check_port ENVOY_ADMIN_PORT "Envoy's admin interface"
    mkdir -p "$ERP_COMPOSE_RUN"
    rm -f "$ERP_COMPOSE_RUN/identity-ca.pem"
    if [ -z "${ENVOY_CONFIG:-}" ]; then
      "$devstack_bin" render-compose > "$ERP_COMPOSE_RUN/envoy.yaml"
      export ENVOY_CONFIG=$ERP_COMPOSE_RUN/envoy.yaml
    fi
    # Podman without systemd runs no healthchecks: start the emulator and
    # the upstream, wait for the CA the emulator writes once it listens,
    # then Envoy (which reads that CA at start).
    compose up -d --no-build idp upstream
    wait_for idp "identity CA" test -s "$ERP_COMPOSE_RUN/identity-ca.pem"
    wait_for upstream "listener on $ECHO_PORT" listening "$ECHO_PORT"
    compose up -d --no-build --no-deps envoy
    wait_for envoy "readiness on $ENVOY_ADMIN_PORT" ready
    wait_for envoy "signing keys" have_keys
    sleep 0.5 # every worker picks the published set up within a tick
    podman ps --filter "label=io.podman.compose.project=$project" --format 'container {{.Names}} {{.Image}} {{.ImageID}} {{.Status}}'
    ;;
  examples)
    ca=$ERP_COMPOSE_RUN/identity-ca.pem
    idp=https://127.0.0.1:$IDP_PORT
    base="http://127.0.0.1:$ENVOY_PORT/api/domain/odata/Customers"
    field() { .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
    jwt=$(curl -sf --cacert "$ca" -d grant_type=client_credentials -d client_id=my.trusted.app/first \
      -d client_secret=my-plain-app-secret -d scope='DomainApi read' "$idp/id/connect/token" | field access_token)
    pat=$(curl -sf --cacert "$ca" -X POST -d '{"kind":"pat","scopes":["read"],"expires_in":86400}' \
      "$idp/admin/reference-tokens" | field token)
    cat <<TXT

erp-edge-validator is running in containers (project $project):
  Envoy with the filter   http://127.0.0.1:$ENVOY_PORT   (admin http://127.0.0.1:$ENVOY_ADMIN_PORT)
  identity emulator       $idp/id   (CA: $ca)
  echo upstream           http://127.0.0.1:$ECHO_PORT, stands in for the Domain API

# 200: a JWT with \`read\` may GET; the echo shows the identity headers it received
curl -s -H 'Authorization: Bearer $jwt' '$base?\$top=10'

# 403 insufficient_scope: the same token may not POST (needs \`update\`)
curl -si -X POST -H 'Authorization: Bearer $jwt' '$base'

# 401: no credential
curl -si '$base'

# a personal access token (PAT) in X-Api-Key
curl -si -H 'X-Api-Key: $pat' '$base?\$top=10'

# a new token from the emulator (client_credentials, as in ERP.net's docs)
curl -s --cacert $ca -d grant_type=client_credentials -d client_id=my.trusted.app/first -d client_secret=my-plain-app-secret -d scope='read update' $idp/id/connect/token

\`make compose-down\` stops it.
TXT
    ;;
  down)
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    # Whatever compose did not remove (a half-started stack).
    ids=$(podman ps -aq --filter "label=io.podman.compose.project=$project")
    [ -z "$ids" ] || podman rm -f $ids >/dev/null
    if [ "${ERP_COMPOSE_RMI:-0}" = 1 ]; then
      for image in erp-edge-envoy erp-devstack erp-devstack-echo; do
        image=localhost/$image:$ERP_COMPOSE_TAG
        podman rmi -f "$image" >/dev/null 2>&1 || true
      done
    fi
    ;;
  *)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac
