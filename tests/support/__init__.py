"""Test support: OCI images built from busybox-static and a real docker-registry to push them to.

Nothing here mocks the system under test; these build the inputs (images, registries) that
criproxy's tests pull, import and run.
"""
