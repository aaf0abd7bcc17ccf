# FlexCore instance image for docker-compose.yml (connects to NATS_URL; no embedded server).
FROM node:20-bookworm-slim AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ bubblewrap && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci
COPY . .
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
# bubblewrap sandboxes tenants' script steps, passt (pasta) gives networked steps their own
# network namespace; both need user namespaces in the container (docs/operations.md).
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap passt python3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /app /app
# The instance runs as the image's unprivileged `node` user (uid 1000), never root. The
# directories that compose mounts named volumes on are created here, owned by it: Docker
# copies that ownership into a new empty volume, so data, keys and seeds are writable.
RUN mkdir -p /data /keys /seeds /auth && chown node:node /data /keys /seeds /auth
USER node
ENV FLEXCORE_DATA=/data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:8080/readyz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "dist/cli/main.js", "up"]
