# kzbridge itself, for running it as a compose service next to the node it traces.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /opt/kzbridge/
COPY kzbridge /opt/kzbridge/kzbridge
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir /opt/kzbridge
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /traces
ENTRYPOINT ["kzbridge"]
CMD ["--help"]
