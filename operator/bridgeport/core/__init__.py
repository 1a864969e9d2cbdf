"""The pure core: resource documents -> typed specs -> node plan -> nftables content.

Nothing in this package performs I/O; an import-linter contract enforces it.
"""
