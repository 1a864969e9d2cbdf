"""The fallback userland proxy (docker-proxy's job): listeners owned by the agent.

The agent binds one socket per (address, port, protocol) from the plan's ProxyPorts
(manager.ProxyManager). UDP is relayed in the agent's event loop through a per-client flow
table (udp.py); TCP by a few worker processes sharing the agent's listening sockets
(pool.py spawns worker.py processes; engine.py relays), with splice(2).

Nothing is imported here: a worker process imports only what it uses.
"""
