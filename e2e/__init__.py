"""End-to-end tests and their infrastructure (local cluster, node simulator)."""
