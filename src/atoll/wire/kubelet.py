"""Where the kubelet's join files live on a node: what the image's ``kubelet.service``
waits for (written by ``atoll compose``, :mod:`atoll.compose.kubernetes`) and what
first boot writes from the user data's ``[kubernetes]`` section
(:mod:`atoll.agent.provision`). Paths are relative to the node's root.
Standard library only (nothing to import, in fact).
"""

from __future__ import annotations

CA = "etc/kubernetes/pki/ca.crt"  # the cluster CA
BOOTSTRAP_KUBECONFIG = "etc/kubernetes/bootstrap-kubelet.conf"  # a bootstrap token's
# A client certificate's (also the kubelet's own, once TLS bootstrapping gave it one):
KUBECONFIG = "etc/kubernetes/kubelet.conf"
CONFIG = "var/lib/kubelet/config.yaml"  # the KubeletConfiguration
CONTAINERD_SOCKET = "unix:///run/containerd/containerd.sock"  # the CRI endpoint
