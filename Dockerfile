# syntax=docker/dockerfile:1
# Ferry's daemon. Build: `docker build -t ferry .`; run it with docker-compose.yml beside this file.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and build artifacts between builds; the binary is
# copied out because the target mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ferry-server \
    && cp target/release/ferry /usr/local/bin/ferry

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ferry
COPY --from=build /usr/local/bin/ferry /usr/local/bin/ferry
USER ferry
ENV FERRY_LISTEN=0.0.0.0:9900
EXPOSE 9900 9901
ENTRYPOINT ["ferry", "server"]
