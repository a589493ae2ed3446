"""The streaming server: exec, attach and port-forward sessions over SPDY/3.1 or WebSocket,
reached through the single-use URLs that the CRI calls Exec, Attach and PortForward hand out.

`server.py` (HTTP/1.1 and the upgrade), `tokens.py`, the wire protocols (`spdy.py`,
`websocket.py`) and the Kubernetes protocols on top (`remotecommand.py`, `portforward.py`);
the sessions themselves run in `criproxy.containers` (exec, attach) and
`criproxy.sandbox` (the pod's network namespace).
"""
