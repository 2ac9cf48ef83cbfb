# The kzbridge fixture node: Kazoo's tracing contract on Debian's OTP and lager.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends erlang-nox erlang-lager \
 && rm -rf /var/lib/apt/lists/*
COPY kzbridge/erlang_fixtures /opt/kzbridge/erlang_fixtures
RUN sh /opt/kzbridge/erlang_fixtures/bin/build.sh /opt/kzbridge/build
ENV KZ_BUILD_DIR=/opt/kzbridge/build \
    NODE_NAME=kazoo_apps@kazoo \
    KZ_GENERATION=2 \
    KZ_RATE=20 \
    DIST_PORT_MIN=9100 \
    DIST_PORT_MAX=9105
EXPOSE 4369 9100-9105
CMD ["sh", "/opt/kzbridge/erlang_fixtures/bin/start-node.sh"]
