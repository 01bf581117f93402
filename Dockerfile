# syntax=docker/dockerfile:1
# docgen-monitor: wheels are built in one stage; the runtime stage installs them into a slim Python
# with no compiler, no pip cache and no source tree, and runs as an unprivileged user.
#   docker build -t docgen-monitor .
#   docker run -v docgen-state:/var/lib/docgen-monitor -v ./config.yaml:/etc/docgen-monitor/config.yaml:ro \
#     -e BOX_CLIENT_ID -e BOX_CLIENT_SECRET -p 9464:9464 docgen-monitor
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
# The project's wheel and one for every dependency, so the runtime stage needs no index and no
# build tools (every dependency publishes binary wheels for linux x86_64 and arm64).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# uid/gid 10001: numeric, so Kubernetes' runAsNonRoot can verify it (deploy/kubernetes uses it too)
RUN groupadd --system --gid 10001 docgen \
    && useradd --system --uid 10001 --gid docgen --no-create-home \
       --home-dir /var/lib/docgen-monitor --shell /usr/sbin/nologin docgen \
    && install -d -o docgen -g docgen -m 0750 /var/lib/docgen-monitor
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/docgen_monitor-*.whl
# A documented default; mount the real one over it (a ConfigMap, a bind mount).
COPY config/example.yaml /etc/docgen-monitor/config.yaml

USER 10001:10001
WORKDIR /var/lib/docgen-monitor
VOLUME ["/var/lib/docgen-monitor"]
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["docgen-monitor"]
CMD ["run", "--config", "/etc/docgen-monitor/config.yaml"]
