# syntax=docker/dockerfile:1
# `b24sense serve` in a container: `docker build -t b24sense .` from the repository root; compose.yaml runs it
# with PostgreSQL and Caddy (crates/web/README.md, "Docker").

# Build: the same toolchain line and Debian release as the runtime image (glibc must match).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p b24sense \
    && install -m 0755 target/release/b24sense /usr/local/bin/b24sense

# Run: Debian slim, CA certificates for the TLS clients, an unprivileged user, nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/b24sense --create-home \
       --shell /usr/sbin/nologin b24sense
COPY --from=build /usr/local/bin/b24sense /usr/bin/b24sense
USER b24sense:b24sense
WORKDIR /var/lib/b24sense
# Inside the container it listens on all interfaces: only the proxy's network reaches it (compose.yaml
# publishes no port of this service). The SQLite default below is used when no PostgreSQL URL is given.
ENV B24SENSE_LISTEN=0.0.0.0:8080 \
    B24SENSE_DATABASE_URL=sqlite:/var/lib/b24sense/b24sense.db \
    B24SENSE_LOG_FORMAT=json
VOLUME ["/var/lib/b24sense"]
EXPOSE 8080
# No curl in the image: bash's /dev/tcp asks /healthz, which answers "ok".
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && grep -qx ok <&3"]
ENTRYPOINT ["/usr/bin/b24sense"]
CMD ["serve"]
