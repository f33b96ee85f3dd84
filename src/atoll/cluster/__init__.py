"""A real Kubernetes for atoll nodes: the binaries, built from the Go module proxy.

``build`` builds kubelet, kube-apiserver, kube-controller-manager,
kube-scheduler and kubectl at the release pinned in the checkout's
``kubernetes/`` wrapper module, reproducibly, and caches them by content
(docs/kubernetes.md). ``atoll cluster build`` is its verb.
"""
