# streamgate workers (gateway, privatizer, shredder) and CLI. Used by docker-compose.yml.
# No key is baked in: the master key comes at run time from a secret file
# (STREAMGATE_MASTER_KEY_FILE) or STREAMGATE_MASTER_KEY.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY stream ./stream
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/streamgate --create-home streamgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER streamgate
WORKDIR /var/lib/streamgate
ENV PYTHONUNBUFFERED=1 \
    STREAMGATE_STATE_DIR=/var/lib/streamgate \
    STREAMGATE_WEB_PORT=0.0.0.0: \
    STREAMGATE_LOG_FORMAT=json
# web ports (health, readiness, Prometheus metrics): gateway, privatizer, shredder
EXPOSE 6066 6067 6068
CMD ["streamgate", "--help"]
