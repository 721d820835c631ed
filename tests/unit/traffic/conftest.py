"""Fixtures for the traffic logger tests: configs, spool helpers, Elasticsearch backends.

``es_backend`` runs each shipper test twice: against the Elasticsearch test double
(``[es_double]``) and against a real cluster (``[real_es]``) when ``AUTOCODE_TEST_ES_URL``
is set (optional ``AUTOCODE_TEST_ES_API_KEY``, ``AUTOCODE_TEST_ES_CA_CERTS``). For the
real cluster, faults are injected by a front on 127.0.0.1 that forwards to it.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import uuid
from typing import Any

import pytest

from testing.elasticsearch_double import ESDouble, FaultServerBase, RealClusterFront

REAL_ES_URL = os.environ.get("AUTOCODE_TEST_ES_URL")


class Backend:
    """What a shipper test needs from Elasticsearch, double or real."""

    def __init__(self, name: str, server: FaultServerBase, index: str) -> None:
        self.name = name
        self.server = server
        self.index = index
        self.api_key_file: str | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def es_settings(self) -> dict:
        settings = {"url": self.url, "index": self.index}
        if self.api_key_file:
            settings["api_key_file"] = self.api_key_file
        return settings

    def ids(self) -> list[str]:
        if isinstance(self.server, ESDouble):
            return self.server.ids(self.index)
        _real_request("POST", f"/{self.index}/_refresh")
        found = _real_request("GET", f"/{self.index}/_search?size=10000&_source=false")
        return [hit["_id"] for hit in found["hits"]["hits"]]


def _real_request(method: str, path: str, body: Any = None) -> Any:
    target = REAL_ES_URL or ""
    scheme, _, rest = target.partition("://")
    hostport = rest.split("/", 1)[0]
    if scheme == "https":
        ca = os.environ.get("AUTOCODE_TEST_ES_CA_CERTS")
        context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        conn = http.client.HTTPSConnection(hostport, context=context, timeout=30)
    else:
        conn = http.client.HTTPConnection(hostport, timeout=30)
    headers = {"Content-Type": "application/json"}
    if os.environ.get("AUTOCODE_TEST_ES_API_KEY"):
        headers["Authorization"] = f"ApiKey {os.environ['AUTOCODE_TEST_ES_API_KEY']}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return json.loads(data) if data else {}


@pytest.fixture(params=["es_double", "real_es"])
def es_backend(request, tmp_path):
    index = f"autocode-traffic-test-{uuid.uuid4().hex[:8]}"
    if request.param == "es_double":
        server: FaultServerBase = ESDouble()
        server.start()
        yield Backend("es_double", server, index)
        server.stop()
        return
    if not REAL_ES_URL:
        pytest.skip("real-cluster twin: set AUTOCODE_TEST_ES_URL to run against Elasticsearch")
    _real_request("PUT", "/_index_template/autocode-traffic-test", {
        "index_patterns": ["autocode-traffic-test-*"], "data_stream": {}, "priority": 500,
        "template": {"mappings": {"properties": {
            "request_headers": {"type": "flattened"},
            "response_headers": {"type": "flattened"}}}},
    })
    server = RealClusterFront(REAL_ES_URL, os.environ.get("AUTOCODE_TEST_ES_CA_CERTS"))
    server.start()
    backend = Backend("real_es", server, index)
    if os.environ.get("AUTOCODE_TEST_ES_API_KEY"):
        key_file = tmp_path / "es.key"
        key_file.write_text(os.environ["AUTOCODE_TEST_ES_API_KEY"])
        backend.api_key_file = str(key_file)
    yield backend
    server.stop()
    _real_request("DELETE", f"/_data_stream/{index}")
