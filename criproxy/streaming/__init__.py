"""Exec, attach and port-forward streaming: criproxy's own HTTP server for the URLs that the
CRI `Exec`, `Attach` and `PortForward` calls hand out, and the protocols spoken over it once
the connection is upgraded (SPDY/3.1 in `spdy`, the Kubernetes WebSocket channel protocols),
with the remotecommand and port-forward stream sets built on top of them."""
