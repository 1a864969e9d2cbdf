"""Kubernetes adapters: the agent's kopf source, its NodeState writer, and the controller."""
