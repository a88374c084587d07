#!/usr/bin/env bash
# The Debian toolchains the Go and Java client tests build with (clients/go, clients/java), installed
# where missing. Without root (or apt) it says what is missing and goes on: those tests then skip with a
# message, except under CI=true, where they fail.
set -euo pipefail
CLIENT_PACKAGES=(
  protobuf-compiler grpc-proto
  golang-go golang-google-grpc-dev golang-google-genproto-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc
  default-jdk-headless protobuf-compiler-grpc-java-plugin libgrpc-java libprotobuf-java libguava-java
  libnetty-java libperfmark-java libgoogle-gson-java libgeronimo-annotation-1.3-spec-java liberror-prone-java junit4
)
missing=()
for package in "${CLIENT_PACKAGES[@]}"; do
  [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null)" == ii* ]] || missing+=("$package")
done
((${#missing[@]})) || exit 0
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "client toolchains missing (install as root to test the Go and Java clients): ${missing[*]}" >&2
  exit 0
fi
echo "installing client toolchains: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${CLIENT_PACKAGES[@]}" >/dev/null
