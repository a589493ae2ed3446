"""CRI containers: create, start, stop, status, IO and logs, exec."""
