"""The local test cluster: a real control plane on loopback with kwok-faked GPU nodes."""

from e2e.cluster.localcluster import ClusterError, LocalCluster, ensure_binaries

__all__ = ["ClusterError", "LocalCluster", "ensure_binaries"]
