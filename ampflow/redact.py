"""Secrets never written down: URIs and messages with their credentials removed, and put back from the
environment only at the moment a connection is made.

Owns :func:`redact_uri` (what ampflow prints, logs, tags or stores for any URI: a dataset source, an
MLflow tracking server), :func:`redact_text` (the same inside free text, e.g. an MLflow exception
message that quotes the whole URI) and :func:`with_credentials` (a stored, redacted tracking URI turned
back into the configured one, credentials and all, when it names the same server). Standard library only.
"""

from __future__ import annotations

import os
import re

# userinfo of any scheme://user:password@host
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]*@")
# query parameters that carry secrets in URLs (presigned URLs, tokens, keys)
_SECRET_PARAM = re.compile(
    r"([?&](?:[^=&\s]*(?:token|key|secret|password|passwd|signature|sig|credential|auth)[^=&\s]*)=)[^&\s#]*",
    re.IGNORECASE,
)


def redact_uri(uri: str) -> str:
    """``uri`` without user name, password, query or fragment: ``s3://key:secret@bucket/x?token=..`` ->
    ``s3://bucket/x``; ``http://alice:pw@host:5000`` -> ``http://host:5000``."""
    uri = _USERINFO.sub(r"\1", uri)
    return uri.split("?", 1)[0].split("#", 1)[0]


def redact_text(text: str) -> str:
    """Free text with every embedded URI's userinfo dropped and secret-named query values masked."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1", text))


def with_credentials(uri: str | None) -> str | None:
    """The configured ``MLFLOW_TRACKING_URI`` when ``uri`` is its redacted form, else ``uri``.

    State files hold redacted URIs; the credentials a replay or a later query needs come from the
    environment at that time (MLflow's own ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` need
    nothing here).
    """
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and configured and redact_uri(configured) == uri:
        return configured
    return uri
