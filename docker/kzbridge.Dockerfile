# kzbridge itself, for running it as a compose service next to the node it traces.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /opt/kzbridge/
COPY kzbridge /opt/kzbridge/kzbridge
# Behind a TLS-intercepting proxy pip needs the host's CA bundle: mount it for the build
# (podman build -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro; scripts/containers.sh
# does when it is needed) rather than copying it into the image. Without the mount pip
# uses its own bundle.
RUN if [ -f /run/host-ca.crt ]; then export PIP_CERT=/run/host-ca.crt; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check /opt/kzbridge
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /traces
ENTRYPOINT ["kzbridge"]
CMD ["--help"]
