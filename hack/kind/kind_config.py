"""Print kind-config.yaml plus the offline cluster's additions (used by hack/kind/e2e.sh).

    kind_config.py kind-config.yaml [cgroupv1] [oom]

Always: kind's default CNI off (flannel is applied instead: kindnetd is not served by the Go
module proxy) and no CoreDNS (nothing in the tests needs cluster DNS, and it would forward
unknown names off the machine). Quirks, only when hack/kind/e2e.sh detected them:
  cgroupv1  kubelet refuses cgroup v1 unless failCgroupV1: false
  oom       containerd must not ask for oom_score_adj -998 (no CAP_SYS_RESOURCE)
"""

import sys

import yaml

with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
quirks = set(sys.argv[2:])
config.setdefault("networking", {})["disableDefaultCNI"] = True
patches = config.setdefault("kubeadmConfigPatches", [])
# kind itself skips preflight (a patch replaces its list, so keep it)
patches.append("kind: InitConfiguration\nskipPhases: [preflight, addon/coredns]\n")
if "cgroupv1" in quirks:
    patches.append("kind: KubeletConfiguration\nfailCgroupV1: false\n")
if "oom" in quirks:
    config.setdefault("containerdConfigPatches", []).append(
        '[plugins."io.containerd.grpc.v1.cri"]\n  restrict_oom_score_adj = true\n')
yaml.safe_dump(config, sys.stdout, sort_keys=False)
