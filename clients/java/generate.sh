#!/usr/bin/env bash
# Regenerate the Java stubs of the service contract (proto/) into clients/java/src/generated/java.
#
#   clients/java/generate.sh           # rewrite the committed stubs
#   clients/java/generate.sh --check   # exit 1 if they differ from a fresh generation
#
# Needs Debian 12's protobuf-compiler (3.21.12), protobuf-compiler-grpc-java-plugin (1.41.3) and
# grpc-proto. Debian ships no Java classes for google.rpc.Status/BadRequest nor for the health service,
# so they are generated here too: google/rpc/{status,error_details}.proto are copies of those in
# googleapis-common-protos 1.76.0 (clients/java/proto/google/rpc), and grpc/health/v1/health.proto
# is read from grpc-proto (/usr/share/grpc-proto).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
grpc_protos="/usr/share/grpc-proto"
stubs="src/generated/java"

for tool in protoc grpc_java_plugin; do
  command -v "$tool" >/dev/null || { echo "$tool not found (apt-get install protobuf-compiler protobuf-compiler-grpc-java-plugin)" >&2; exit 2; }
done
[[ -f "$grpc_protos/grpc/health/v1/health.proto" ]] || { echo "$grpc_protos missing (apt-get install grpc-proto)" >&2; exit 2; }

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
gen() {  # gen PROTO_ROOT FILE...: messages and services of FILE... (paths relative to PROTO_ROOT)
  local proto_root="$1"; shift
  (cd "$proto_root" && protoc -I . --java_out="$out" \
    --plugin=protoc-gen-grpc-java="$(command -v grpc_java_plugin)" --grpc-java_out="$out" "$@")
}
gen "$root/proto" $(cd "$root/proto" && find . -name '*.proto' | sed 's|^\./||' | sort)
gen "$here/proto" google/rpc/status.proto google/rpc/error_details.proto
gen "$grpc_protos" grpc/health/v1/health.proto

if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r "$out" "$here/$stubs" >&2; then
    echo "stale Java stubs: run clients/java/generate.sh" >&2
    exit 1
  fi
  exit 0
fi
rm -rf "${here:?}/$stubs"
mkdir -p "$here/$stubs"
cp -r "$out/." "$here/$stubs/"
echo "wrote $here/$stubs"
