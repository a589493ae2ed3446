"""CRI messages <-> domain dataclasses, one module per message family; no I/O, no state."""

from criproxy.cri.convert import metrics, stats

__all__ = ["metrics", "stats"]
