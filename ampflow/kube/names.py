"""Kubernetes object names: make any user text a valid DNS-1035 label, deterministically.

    >>> dns1035_name("My_Job.v2")
    'my-job-v2'
    >>> len(dns1035_name("x" * 100))
    63

Torch-free, kubernetes-client-free: KFP components and Airflow DAG files import it.
"""

from __future__ import annotations

import hashlib
import re

from ampflow.config import ConfigError

MAX_LABEL = 63
DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# label values (not keys): empty, or <= 63 chars of [A-Za-z0-9_.-] starting and ending alphanumeric
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_HASH_LEN = 8


def is_dns1035(name: str, max_len: int = MAX_LABEL) -> bool:
    return isinstance(name, str) and len(name) <= max_len and bool(DNS1035_RE.match(name))


def dns1035_name(text: str, max_len: int = MAX_LABEL, *, prefix: str = "j") -> str:
    """Return ``text`` as a DNS-1035 label of at most ``max_len`` characters.

    Lower-cased; runs of other characters become one ``-``; a leading digit gets ``prefix-``. A name
    that must be cut keeps a hash of the whole input as its suffix, so two long names that share a
    prefix stay distinct and the same input always gives the same name (a retry finds its job).
    Text with no letter or digit at all is bad input.
    """
    if not isinstance(text, str):
        raise ConfigError(f"name must be a string, got {type(text).__name__}")
    if max_len < _HASH_LEN + 2:
        raise ValueError(f"max_len {max_len} leaves no room for a name")
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug:
        raise ConfigError(
            f"name {text!r} has no letter or digit; a job name needs lower-case letters, digits and '-'"
        )
    if not slug[0].isalpha():
        slug = f"{prefix}-{slug}"
    if len(slug) <= max_len:
        return slug
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_LEN]
    head = slug[: max_len - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{digest}"


def max_job_name_len(api: str, nodes: int) -> int:
    """The longest job name whose pods and services still get valid names.

    The v1 operator names a pod and its headless service ``<job>-worker-<i>``; Trainer v2 (JobSet)
    gives a pod the hostname ``<job>-node-0-<i>``. Each must itself be a DNS label of 63 characters.
    """
    last = max(nodes - 1, 0)
    if api == "trainjob":
        suffix = f"-node-0-{last}"
    else:
        suffix = f"-worker-{max(nodes - 2, 0)}" if nodes > 1 else "-master-0"
    return MAX_LABEL - len(suffix)


def label_value(text: str) -> str:
    """A label value derived from ``text`` (recipe names such as ``pkg.mod:fn`` carry a ``:``)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:MAX_LABEL].strip("-_.")
    return value
