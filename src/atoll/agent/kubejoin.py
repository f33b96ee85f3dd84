"""Whether the node's join data works: what it is, what a probe's outcome means, when
to look again, and where the verdict is kept (node side, standard library only).

First boot writes the kubelet's join data from the user data's ``[kubernetes]``
section (:mod:`atoll.agent.provision`; paths in :mod:`atoll.wire.kubelet`): the
API server's URL, the cluster CA, and a bootstrap token or a client certificate.
Bad join data (a wrong token, an unreachable server, a CA that did not sign the
server's certificate) would otherwise show only as a kubelet that retries
forever in the journal. So while the kubelet has no client certificate of its
own yet, the agent asks the API server one cheap question with the same
credentials (:func:`atoll.agent.kubenode.probe_join`: a SelfSubjectReview, which
every authenticated user may create and which answers who the server takes the
caller for) and classifies the outcome here (:func:`classify`, pure):

* ``ok``: the server answered and took the credentials (``joined`` follows once
  the kubelet holds its certificate, :data:`CLIENT_CERT`; no more probes then);
* ``unreachable``: no connection (refused, timed out, no route, unknown name);
* ``untrusted``: the server's certificate does not verify against the cluster CA;
* ``refused``: the server answered 401 or 403 to these credentials;
* ``invalid``: the join data on the node cannot be used (missing or not PEM);
* ``failed``: anything else (another HTTP status, a TLS error of another kind).

The verdict (:class:`JoinReport`) is kept in :data:`REPORT` (under ``/run``:
it is this boot's) and shown by the agent's ``GET /v1/status`` as
``kubernetes``; a node without join data has none. :func:`retry_delay` is the
schedule: soon after a failure, backing off to :data:`MAX_DELAY`.

Nothing here talks to the network, so the agent's server may import it before
READY.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import ssl
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from atoll.durable import write_atomic
from atoll.wire import kubelet

CLIENT_CERT = "var/lib/kubelet/pki/kubelet-client-current.pem"  # kept by the kubelet
REPORT = "run/atoll/kubernetes-join.json"  # the last verdict (GET /v1/status)
FIRST_DELAY = 5.0  # seconds after a first failure
MAX_DELAY = 120.0  # seconds between probes at most, while failing
OK_DELAY = 15.0  # seconds between probes while the kubelet waits for its certificate
JOINED_DELAY = 30.0  # seconds between looks for the certificate once joined
MESSAGE_MAX = 300  # characters of a server's own message kept


class JoinState(StrEnum):
    OK = "ok"
    JOINED = "joined"
    UNREACHABLE = "unreachable"
    UNTRUSTED = "untrusted"
    REFUSED = "refused"
    INVALID = "invalid"
    FAILED = "failed"


class JoinDataError(Exception):
    """The join data on the node cannot be used; the message names the file."""


@dataclass(frozen=True)
class JoinData:
    """What the kubelet was given to join with (first boot wrote it)."""

    server: str  # https URL
    ca: Path
    token: str | None  # a bootstrap token, or
    certificate: bytes | None  # a client certificate and its key (PEM)
    key: bytes | None
    source: Path  # the kubeconfig it came from


@dataclass(frozen=True)
class JoinReport:
    state: JoinState
    server: str
    message: str  # one line that names the server and what went wrong (or who we are)
    checked_at: float  # seconds since the epoch

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "server": self.server,
            "message": self.message,
            "checked_at": self.checked_at,
        }


def find_join_data(root: Path) -> JoinData | None:
    """The join data first boot wrote (the bootstrap kubeconfig, else the kubeconfig
    with a pre-issued certificate); None on a node that never joins. Raises
    :class:`JoinDataError` for a kubeconfig that is there but unusable."""
    for name in (kubelet.BOOTSTRAP_KUBECONFIG, kubelet.KUBECONFIG):
        path = root / name
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise JoinDataError(f"{path}: {e}") from e
        try:
            config = json.loads(text)
        except ValueError:
            if name == kubelet.KUBECONFIG:
                continue  # the kubelet's own (YAML): it has joined
            raise JoinDataError(f"{path}: not JSON") from None
        return _join_data(config, path, root / kubelet.CA)
    return None


def _join_data(config: Any, path: Path, ca: Path) -> JoinData:
    try:
        server = config["clusters"][0]["cluster"]["server"]
        user = config["users"][0]["user"]
    except (KeyError, IndexError, TypeError):
        raise JoinDataError(f"{path}: no cluster server or user") from None
    if not isinstance(server, str) or not server.startswith("https://"):
        raise JoinDataError(f"{path}: server {server!r} is not an https:// URL")
    token = user.get("token") if isinstance(user, dict) else None
    if isinstance(token, str) and token:
        return JoinData(server, ca, token, None, None, path)
    try:
        cert = base64.b64decode(user["client-certificate-data"], validate=True)
        key = base64.b64decode(user["client-key-data"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise JoinDataError(f"{path}: neither a token nor client certificate data") from None
    return JoinData(server, ca, None, cert, key, path)


def joined(root: Path) -> bool:
    """Whether the kubelet holds its own client certificate (TLS bootstrapping is done)."""
    return (root / CLIENT_CERT).exists()


def classify(
    outcome: int | BaseException, *, server: str, ca: Path, said: str = ""
) -> tuple[JoinState, str]:
    """What a probe's outcome means: an HTTP status (with the server's message
    ``said``) or the exception that ended it. Returns the state and one line for a
    person, naming the server (and the CA for a certificate that does not verify)."""
    if isinstance(outcome, int):
        return _classify_status(outcome, server, said)
    return _classify_error(outcome, server, ca)


def _classify_status(status: int, server: str, said: str) -> tuple[JoinState, str]:
    said = _one_line(said)
    if 200 <= status < 300:
        who = f" as {said}" if said else ""
        return JoinState.OK, f"{server}: credentials accepted{who}"
    if status in (401, 403):
        meaning = "unknown or expired" if status == 401 else "not allowed"
        return (
            JoinState.REFUSED,
            f"{server}: credentials refused (HTTP {status}, {meaning}): {said or 'no message'}",
        )
    return JoinState.FAILED, f"{server}: unexpected answer HTTP {status}: {said or 'no message'}"


def _classify_error(error: BaseException, server: str, ca: Path) -> tuple[JoinState, str]:
    if isinstance(error, JoinDataError):
        return JoinState.INVALID, f"join data: {error}"
    if isinstance(error, ssl.SSLCertVerificationError):
        why = getattr(error, "verify_message", "") or str(error)
        return (
            JoinState.UNTRUSTED,
            f"{server}: server certificate not trusted by the cluster CA {ca}: {why}",
        )
    if isinstance(error, ssl.SSLError):  # before OSError: it is one
        why = getattr(error, "reason", "") or str(error)  # OpenSSL's name when it set one
        return JoinState.FAILED, f"{server}: TLS handshake failed: {why}"
    if isinstance(error, OSError):
        return JoinState.UNREACHABLE, f"{server}: unreachable: {_unreachable(error)}"
    return JoinState.FAILED, f"{server}: {type(error).__name__}: {_one_line(str(error))}"


_UNREACHABLE: tuple[tuple[type[OSError], str], ...] = (
    (socket.gaierror, "cannot resolve its host name"),
    (TimeoutError, "no answer in time"),
    (ConnectionRefusedError, "connection refused"),
)


def _unreachable(error: OSError) -> str:
    for kind, why in _UNREACHABLE:
        if isinstance(error, kind):
            return why
    return error.strerror or str(error) or type(error).__name__


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_MAX else line[: MESSAGE_MAX - 1] + "\u2026"


def retry_delay(state: JoinState, failures: int) -> float:
    """Seconds until the next look, after ``failures`` failed probes in a row."""
    if state is JoinState.JOINED:
        return JOINED_DELAY
    if state is JoinState.OK or failures <= 0:
        return OK_DELAY
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** min(failures - 1, 16)))


def write_report(root: Path, report: JoinReport) -> None:
    path = root / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report.to_json()) + "\n")


def read_report(root: Path) -> dict[str, Any] | None:
    """The last verdict as JSON (``GET /v1/status``'s ``kubernetes``), None before one."""
    try:
        report = json.loads((root / REPORT).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None
