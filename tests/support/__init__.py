"""Test support: OCI images built from busybox-static and a real docker-registry to push them to,
and the cgroup metrics and net/dev texts the stats tests read.

Nothing here mocks the system under test; these build the inputs (images, registries, metrics)
that criproxy's tests pull, import, run and decode.
"""
