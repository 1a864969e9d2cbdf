"""Thin adapters between the pure core and the world: nftables, netlink, files, sockets."""
