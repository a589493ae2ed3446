# criproxy and containerd from Debian 12, for docker-compose.yml.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends containerd runc crun containernetworking-plugins \
      iptables iproute2 python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /opt/criproxy/
COPY criproxy /opt/criproxy/criproxy
RUN python3 -m venv /opt/criproxy/.venv && /opt/criproxy/.venv/bin/pip install --no-cache-dir /opt/criproxy
ENV PATH=/opt/criproxy/.venv/bin:$PATH
CMD ["criproxy", "serve"]
