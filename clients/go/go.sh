#!/usr/bin/env bash
# Run the go tool on this module offline, against the Go sources Debian 12 installs under
# /usr/share/gocode (golang-google-grpc-dev, golang-google-protobuf-dev, golang-google-genproto-dev,
# golang-github-golang-protobuf-1-5-dev), in GOPATH mode: no module proxy, no go.sum needed.
#
#   clients/go/go.sh test ./...
#   clients/go/go.sh run ./cmd/rerank -target 127.0.0.1:50051 "query" "doc 1" "doc 2"
#
# The module is linked into a GOPATH of its own per checkout under $MATRYOSHKA_GO_CACHE (default: a fixed
# folder in the temp dir), where the shared build cache lives too, so repeated builds are fast.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
module="github.com/matryoshka-rerank/matryoshka-rerank/clients/go"
cache="${MATRYOSHKA_GO_CACHE:-${TMPDIR:-/tmp}/matryoshka-rerank-go}"

command -v go >/dev/null || { echo "go not found (apt-get install golang-go)" >&2; exit 2; }
gopath="$cache/gopath-$(printf '%s' "$here" | md5sum | cut -c1-12)"
link="$gopath/src/$module"
mkdir -p "$(dirname "$link")"
[[ -L "$link" ]] || ln -s "$here" "$link"
export GOPATH="$gopath:/usr/share/gocode"
export GOCACHE="$cache/build"
export GO111MODULE=off GOFLAGS= GOPROXY=off
cd "$link"
exec go "$@"
