#!/usr/bin/env bash
# `make serve`: start the server on the embedded default model, answer one demo query through the
# gRPC client once it is SERVING, then keep serving until Ctrl-C / SIGTERM (which drains in-flight calls).
set -euo pipefail
venv=${VENV:-.venv}
port=${PORT:-50051}
host=${HOST:-127.0.0.1}
"$venv/bin/python" -m matryoshka serve --host "$host" --port "$port" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"' INT TERM
"$venv/bin/matryoshka" rerank --target "$host:$port" --wait-ready 600 \
    "who wrote romeo and juliet" \
    "Romeo and Juliet is a tragedy written by William Shakespeare early in his career." \
    "Bananas are rich in potassium." \
    "The stock market fell sharply on Monday." \
    || { kill -TERM "$server"; wait "$server"; exit 1; }
echo "matryoshka is serving on $host:$port (Ctrl-C to stop)"
wait "$server"
