# syntax=docker/dockerfile:1
# Every bookrec image, one target per service: api, batch, optimizer, jupyter (Python) and frontend (nginx).
# `docker compose build` builds them all; one by hand:
#   docker build -f Dockerfile --target api -t bookrec-api .
#
# Base images are pinned by exact version tags, so a rebuild gets the same Python and nginx; a tag
# still receives the OS's security fixes. To freeze one completely, append its digest (tag@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG NGINX_IMAGE=nginxinc/nginx-unprivileged:1.27.5-alpine3.21

# The locked dependency set (requirements.lock, made by scripts/lock.sh), without bookrec. Only
# the lock is copied first, so this slow layer is rebuilt when the lock changes, not when the
# source or the README does.
FROM ${PYTHON_IMAGE} AS deps
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache
WORKDIR /app
COPY requirements.lock ./
# Wheels only: nothing is compiled at build time, and every file must match a hash in the lock.
RUN pip install --no-deps --require-hashes --only-binary :all: -r requirements.lock
# /metrics is created owned by bookrec so that a fresh named volume mounted there is writable.
RUN useradd --create-home --uid 10001 bookrec \
    && mkdir -p /data /metrics && chown bookrec /data /metrics

# bookrec itself. `pip check` fails the build if the lock no longer satisfies pyproject.toml.
FROM deps AS app
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation . && pip check && rm -rf build
# Compile the numba kernels into the image (NUMBA_CACHE_DIR), once for the three Python targets, so
# a container's first fit or request does not spend a minute and a half compiling them. numba keys
# the cache by CPU model: on another CPU the kernels compile again on first use.
RUN bookrec warmup && chmod -R a+rwX "$NUMBA_CACHE_DIR"
USER bookrec
WORKDIR /data
# Paths the settings read; relative ones (the embedded store's default) resolve against WORKDIR.
ENV BOOKREC_DATA_DIR=/data/normalized \
    BOOKREC_TUNED_CONFIG_PATH=/data/tuned-params.json \
    BOOKREC_OPTUNA_STORAGE=sqlite:////data/optuna.db

FROM app AS api
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"
CMD ["bookrec", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM app AS batch
CMD ["bookrec", "batch"]

FROM app AS optimizer
CMD ["bookrec", "optimize"]

# Development mode: JupyterLab on 8888 over bookrec; Compose mounts ./notebooks in its folder.
# The notebook extra is not in requirements.lock (the services do not run it), so it resolves here,
# constrained by the lock so that bookrec's own dependencies stay at their locked versions. The
# hashes are stripped because pip refuses hashed requirements beside a local directory.
FROM app AS jupyter
USER root
RUN sed '/--hash/d; s/ \\$//' /app/requirements.lock > /tmp/constraints.txt \
    && pip install --no-build-isolation -c /tmp/constraints.txt "/app[notebook]" && pip check \
    && rm -rf /tmp/constraints.txt /app/build \
    && mkdir -p /home/bookrec/notebooks && chown bookrec /home/bookrec/notebooks
USER bookrec
WORKDIR /home/bookrec/notebooks
EXPOSE 8888
# Jupyter reads its token from JUPYTER_TOKEN; unset or empty, it makes a random one and logs it.
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]

# nginx serving the static page and proxying the API under /api/, as user 101 (nginx), not root.
# It listens on 3000 inside, a port an unprivileged user may bind.
FROM ${NGINX_IMAGE} AS frontend
COPY deploy/nginx.conf /etc/nginx/conf.d/default.conf
COPY src/bookrec/web/static /usr/share/nginx/html
# The page reads its API base from this meta tag; behind nginx the API lives under /api/.
USER root
RUN sed -i 's|<meta name="api-base" content="[^"]*">|<meta name="api-base" content="/api">|' /usr/share/nginx/html/index.html
USER 101
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s CMD wget -q -O /dev/null http://127.0.0.1:3000/ || exit 1
