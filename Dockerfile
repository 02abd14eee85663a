# fedgate: one image for every role (gateway, worker, the CLI). `docker compose up` uses it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY shared ./shared
COPY gateway ./gateway
COPY worker ./worker
COPY fedgate ./fedgate
COPY bench ./bench
# otlp: trace export to a collector; http: the OpenAI-compatible front door (--http-port)
RUN pip install -c constraints.txt ".[otlp,http]" \
    && useradd --create-home --uid 10001 fedgate
USER fedgate

ENTRYPOINT ["fedgate"]
CMD ["--help"]
