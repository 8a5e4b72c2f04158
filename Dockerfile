# zcfs in a container: `zcfs -f` is the main process, and `docker stop`
# (SIGTERM) unmounts cleanly. See the README's "Containers" section.
#
#   docker build -t zcfs .
#   mkdir -p /mnt/zcfs/mirror && mount --bind /mnt/zcfs /mnt/zcfs && mount --make-shared /mnt/zcfs
#   docker run -d --name zcfs --device /dev/fuse --cap-add SYS_ADMIN \
#       -v /srv/data:/data -v /mnt/zcfs:/mnt/zcfs:rshared zcfs     # /srv/data at /mnt/zcfs/mirror
#
# BASE: any Debian 12 image. PIP_OPTS: extra pip options, e.g. for a build
# without an index: --build-arg PIP_OPTS="--no-index --find-links /src/wheels"
# with the wheels in the build context (`pip wheel -w wheels '.[metrics]'` and
# `pip download -d wheels flit_core`, the build backend).
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc pkg-config libfuse3-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
ARG PIP_OPTS=
# With the metrics extra: `--metrics HOST:PORT` serves Prometheus from the container.
RUN python3 -m venv /opt/zcfs && /opt/zcfs/bin/pip install --no-cache-dir $PIP_OPTS '/src[metrics]'

FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 fuse3 libfuse3-3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/zcfs /opt/zcfs
ENV PATH=/opt/zcfs/bin:$PATH
RUN mkdir -p /data /mnt/zcfs/mirror
# The daemon unmounts and exits on SIGTERM, well within docker stop's 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["zcfs", "-f"]
# One level below the shared volume, never at its root: a killed container's
# dead mount is then not the volume's source, which Docker would refuse, and
# the next container's zcfs clears it (the unmount propagates to the host).
CMD ["/data", "/mnt/zcfs/mirror"]
