#!/usr/bin/env bash
# Regenerate the Go stubs of the service contract (proto/) into clients/go/matryoshka/v1.
#
#   clients/go/generate.sh           # rewrite the committed stubs
#   clients/go/generate.sh --check   # exit 1 if they differ from a fresh generation
#
# Needs Debian 12's protobuf-compiler, protoc-gen-go (1.28.1) and protoc-gen-go-grpc (1.33.3), whose
# versions are written into the output. The health and google.rpc error-detail types come from the Go
# sources Debian ships (grpc-go's health/grpc_health_v1, genproto's googleapis/rpc/errdetails).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
module="github.com/matryoshka-rerank/matryoshka-rerank/clients/go"
stubs="matryoshka/v1"

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install protobuf-compiler protoc-gen-go protoc-gen-go-grpc)" >&2; exit 2; }
done

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
(cd "$root/proto" && protoc -I . \
  --go_out="$out" --go_opt=module="$module" \
  --go-grpc_out="$out" --go-grpc_opt=module="$module" \
  $(find . -name '*.proto' | sed 's|^\./||' | sort))

if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r "$out/$stubs" "$here/$stubs" >&2; then
    echo "stale Go stubs: run clients/go/generate.sh" >&2
    exit 1
  fi
  exit 0
fi
rm -rf "${here:?}/$stubs"
mkdir -p "$here/$stubs"
cp -r "$out/$stubs/." "$here/$stubs/"
echo "wrote $here/$stubs"
