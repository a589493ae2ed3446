"""CNI invocation and network namespaces."""
