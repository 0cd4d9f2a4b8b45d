# The tenancy-bridge binary (daemon, Config Mapper and CLI in one), built from this repository.
FROM rust:1.95-bookworm AS build
# librdkafka is built from source by rdkafka-sys: a C toolchain, make, zlib and OpenSSL headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin tenancy-bridge

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tenancy-bridge --create-home bridge
COPY --from=build /src/target/release/tenancy-bridge /usr/local/bin/tenancy-bridge
USER bridge
WORKDIR /var/lib/tenancy-bridge
ENTRYPOINT ["tenancy-bridge"]
CMD ["--help"]
