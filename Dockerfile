# One image for every service: `slt run <service>` picks which one a container runs.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY backtest ./backtest
COPY bench ./bench
COPY config ./config
RUN pip install . \
 && useradd --create-home --uid 10001 slt \
 && mkdir -p /app/var && chown -R slt /app/var
USER slt
ENTRYPOINT ["slt"]
CMD ["--help"]
