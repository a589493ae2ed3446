"""CRI messages <-> domain dataclasses, one module per message family (sandbox, container,
resources, stats, metrics); no I/O, no state."""
