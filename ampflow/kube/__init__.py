"""Kubeflow jobs for ampflow: manifest builders (pure) and the client that submits and watches.

``ampflow.kube`` itself, ``names`` and ``manifests`` import neither torch, mlflow nor the kubernetes
client; ``ampflow.kube.client`` needs the ``kube`` extra (``kubernetes``) and imports it on use.

    ampflow launch --recipe tweets-bow --data /data/tweets --nodes 2 --gpus-per-node 8 \\
        --image registry.example.com/ampflow:0.1.0 --dry-run
"""

from ampflow.kube.manifests import (
    APIS,
    LaunchSpec,
    build_manifest,
    container_command,
    resource_of,
    spec_hash,
    validate_admission,
)
from ampflow.kube.names import dns1035_name, is_dns1035

__all__ = [
    "APIS",
    "LaunchSpec",
    "build_manifest",
    "container_command",
    "dns1035_name",
    "is_dns1035",
    "resource_of",
    "spec_hash",
    "validate_admission",
]
