"""Clients of autocode-control's API, one per side: operators (token) and workers (client
certificate). requests, the HTTP client the runtime already carries (hvac's), verifying the
service against the platform CA only, and never through a proxy from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter


class ControlError(Exception):
    """The service refused (status >= 400) or could not be reached (status 0)."""

    def __init__(self, status: int, error: str, field: str = "", fix: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.field, self.fix = status, error, field, fix

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{where}{self.error}" + (f"; {self.fix}" if self.fix else "")


class _SourceAddress(HTTPAdapter):
    """Connections from a given local address (a multi-homed worker, and the tests' workers
    on 127.0.0.x)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        return super().init_poolmanager(*args, **kwargs)


@dataclass
class _Base:
    url: str
    ca_cert: Path | str
    timeout_s: float = 30.0
    source_address: str | None = None

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # no HTTPS_PROXY, no netrc: the platform's CA only
        self.session.verify = str(self.ca_cert)
        if self.source_address:
            self.session.mount("https://", _SourceAddress(self.source_address))

    def _call(self, method: str, path: str, *, timeout: float | None = None,
              **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, self.url + path,
                                            timeout=timeout or self.timeout_s, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise ControlError(0, f"TLS with {self.url} failed ({exc})", "",
                               "check the CA certificate and that this is autocode-control"
                               ) from None
        except requests.RequestException as exc:
            raise ControlError(0, f"cannot reach {self.url} ({type(exc).__name__})", "",
                               "is autocode-control running, and is this a management "
                               "network?") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text.strip()[:500] or response.reason}
            raise ControlError(response.status_code, str(body.get("error", "")),
                               str(body.get("field", "")), str(body.get("fix", "")))
        return response

    def close(self) -> None:
        self.session.close()


@dataclass
class OperatorClient(_Base):
    token: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/tasks", json=spec).json()

    def ensure_repo(self, name: str) -> None:
        self._call("PUT", f"/v1/repos/{_quoted(name)}")

    def list(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v not in (None, [], ())}
        return self._call("GET", "/v1/tasks", params=params).json()

    def get(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/tasks/{_quoted(task_id)}").json()

    def log(self, task_id: str, offset: int = 0) -> tuple[bytes, int, str]:
        response = self._call("GET", f"/v1/tasks/{_quoted(task_id)}/log",
                              params={"offset": offset})
        return (response.content, int(response.headers["X-Next-Offset"]),
                response.headers["X-Task-Status"])

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/tasks/{_quoted(task_id)}/cancel").json()

    def retry(self, task_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/tasks/{_quoted(task_id)}/retry").json()


@dataclass
class WorkerClient(_Base):
    cert: Path | str = ""
    key: Path | str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.session.cert = (str(self.cert), str(self.key))

    def claim(self, wait_s: float = 0) -> dict[str, Any] | None:
        response = self._call("POST", "/v1/worker/claim", params={"wait_s": wait_s},
                              timeout=wait_s + self.timeout_s)
        return None if response.status_code == 204 else response.json()

    def start(self, task_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/worker/tasks/{_quoted(task_id)}/start").json()

    def heartbeat(self, task_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/worker/tasks/{_quoted(task_id)}/heartbeat").json()

    def log(self, task_id: str, start: int, data: bytes) -> int:
        return self._call("POST", f"/v1/worker/tasks/{_quoted(task_id)}/log",
                          params={"start": start}, data=data,
                          headers={"Content-Type": "application/octet-stream"}
                          ).json()["length"]

    def finish(self, task_id: str, status: str, reason: str = "",
               result: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call("POST", f"/v1/worker/tasks/{_quoted(task_id)}/finish",
                          json={"status": status, "reason": reason, "result": result or {}}
                          ).json()


def _quoted(task_id: str) -> str:
    return requests.utils.quote(task_id, safe="")
