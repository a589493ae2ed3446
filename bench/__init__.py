"""Benchmarks that compare criproxy with containerd's built-in CRI plugin on this machine."""
