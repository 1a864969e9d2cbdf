"""Fixtures every subsystem's tests may use, from tests/harness: `world`/`w` (a node with a
real agent: harness/node.py) and the local control plane (`control_plane`, `kubectl`, `crds`,
`kube_client`, `namespace`: harness/apiserver.py). tests/proxy has its own `world`."""

pytest_plugins = ("tests.harness.node", "tests.harness.apiserver")
