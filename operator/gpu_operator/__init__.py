"""A Kubernetes operator for the NVIDIA GPU software stack."""

__version__ = "0.1.0"
