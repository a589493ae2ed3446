"""NRI, the Node Resource Interface: plugins that connect to criproxy's socket and see,
adjust or veto pods and containers at each step of their lives (containerd/nri's protocol,
spoken here: ttrpc over NRI's multiplexer)."""
