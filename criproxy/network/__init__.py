"""Pod networking: CNI (`cni/`: configuration, requests, results, the plugin runner) and
network namespaces (`netns`)."""
