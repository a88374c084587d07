#!/usr/bin/env bash
# Compile the Java client, its example and its tests with javac against Debian 12's jars (no Maven,
# no network), into OUT (default clients/java/build): OUT/classes, OUT/test-classes, and OUT/classpath,
# the runtime classpath to pass to java -cp.
#
#   clients/java/build.sh [OUT]
#   java -cp "$(cat build/classpath)" dev.matryoshka.rerank.client.Example 127.0.0.1:50051 0 "query" "doc 1" "doc 2"
#   MATRYOSHKA_TARGET=127.0.0.1:50051 java -cp "$(cat build/classpath)" org.junit.runner.JUnitCore \
#       dev.matryoshka.rerank.client.RerankClientTest
#
# Jars: libgrpc-java, libprotobuf-java, libguava-java, libnetty-java, libperfmark-java,
# libgoogle-gson-java; for compiling only, libgeronimo-annotation-1.3-spec-java (javax.annotation.Generated
# in the gRPC stubs) and liberror-prone-java (annotations on gRPC's classes); junit4 for the tests.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/build}" && cd "${1:-$here/build}" && pwd)"
java_dir=/usr/share/java
runtime=(
  grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub protobuf guava
  perfmark-api gson netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks
  netty-common netty-handler netty-handler-proxy netty-resolver netty-transport
  netty-transport-native-unix-common
)
jars() { local IFS=:; local paths=(); for j in "$@"; do paths+=("$java_dir/$j.jar"); done; echo "${paths[*]}"; }

command -v javac >/dev/null || { echo "javac not found (apt-get install default-jdk-headless)" >&2; exit 2; }
for j in "${runtime[@]}" geronimo-annotation-1.3-spec error_prone_annotations junit4 hamcrest-core; do
  [[ -f "$java_dir/$j.jar" ]] || { echo "$java_dir/$j.jar missing (see the package list above)" >&2; exit 2; }
done

classpath="$(jars "${runtime[@]}")"
rm -rf "$out/classes" "$out/test-classes"
# the generated stubs (their warnings are protoc's), then the client and example (no warnings allowed)
find "$here/src/generated/java" -name '*.java' > "$out/generated-sources"
javac -nowarn -encoding UTF-8 --release 17 -d "$out/classes" \
  -cp "$classpath:$java_dir/geronimo-annotation-1.3-spec.jar" @"$out/generated-sources"
find "$here/src/main/java" -name '*.java' > "$out/main-sources"
javac -Xlint:all -Werror -encoding UTF-8 --release 17 -d "$out/classes" \
  -cp "$out/classes:$classpath:$java_dir/error_prone_annotations.jar" @"$out/main-sources"
find "$here/src/test/java" -name '*.java' > "$out/test-sources"
javac -Xlint:all -Werror -encoding UTF-8 --release 17 -d "$out/test-classes" \
  -cp "$out/classes:$classpath:$(jars error_prone_annotations junit4 hamcrest-core)" @"$out/test-sources"
echo "$out/classes:$out/test-classes:$classpath:$(jars junit4 hamcrest-core)" > "$out/classpath"
echo "built $out"
