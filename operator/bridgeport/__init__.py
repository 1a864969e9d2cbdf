"""bridgeport: Docker-grade bridge networking and published ports, declared in Kubernetes."""

__version__ = "0.1.0"
