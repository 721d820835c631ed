"""Traffic logger: every worker connection through the orchestrator's mitmproxy is recorded
(HTTP(S) requests, and whatever else it carries), credentials redacted, spooled durably on
local disk, then shipped to Elasticsearch.

Two processes, so Elasticsearch slowness never touches the proxy::

    mitmdump (AutocodeLogger addon) --queue--> writer thread --> spool_dir/segment-*.jsonl
    autocode-traffic-shipper        <-- reads spool, bulk create --> ES data stream

Systemd units (paths for a venv at /opt/autocode/venv)::

    ExecStart=/opt/autocode/venv/bin/mitmdump --mode transparent --showhost \\
        --set flow_detail=0 \\
        -s /opt/autocode/venv/lib/python3.11/site-packages/autocode/traffic/addon.py \\
        --set autocode_traffic_config=/etc/autocode/traffic.yaml
    ExecStart=/opt/autocode/venv/bin/autocode-traffic-shipper \\
        --config /etc/autocode/traffic.yaml

(``autocode-traffic-shipper --print-addon-path`` prints the ``-s`` path;
``--check-config`` validates the file, exit 2 with a message naming the field if invalid.)

Config file (YAML); only ``spool_dir`` is required::

    spool_dir: /mnt/data/autocode/logs/traffic  # absolute; created if missing
    workers:                     # client IP -> worker id; other IPs are logged as "unknown"
      10.20.0.11: w1
      10.20.0.12: w2
    fail_closed: true            # spool unwritable / queue full -> new flows get 503
                                 # false: log the error and let traffic through
    non_http: block              # raw TCP, TLS around another protocol, WebSocket and
                                 # other upgrades: block (refused) or allow (relayed);
                                 # recorded either way
    queue_size: 10000            # max flows in flight + records waiting for the spool
    writer_batch_max: 1000       # records per spool write (one fsync per batch)
    writer_retry_seconds: 1.0    # retry/probe interval of a failed spool
    writer_linger_seconds: 0.05  # group commit: gather records this long per fsync (0 = off)
    segment_max_bytes: 67108864  # rotate segments at this size (>= 1024)
    min_free_bytes: 16777216     # fail closed before the disk is completely full (0 = off)
    keep_shipped_segments: false # true: move shipped segments to spool_dir/shipped/
    shipped_keep_days: 7         # delete shipped copies older than this (unset: keep); they
                                 # also go, oldest first, when free space < 2 x min_free_bytes
    dead_letter_keep_days: 90    # dead-letter.jsonl is archived as dead-letter-<day>.jsonl
                                 # after its last day; archives older than this are deleted
    redact_headers: [x-vendor-auth]     # extra header names, on top of Authorization,
                                        # Proxy-Authorization, Cookie, Set-Cookie,
                                        # X-Api-Key, api-key (always redacted)
    redact_patterns: ["^x-internal-"]   # extra regexes (case-insensitive) on header names
                                        # and URL query parameter names
    redact_value_patterns: ["acme_[A-Za-z0-9]{32}"]  # extra regexes for secret values
                                        # anywhere in header values and URLs
    elasticsearch:
      url: https://127.0.0.1:9200
      index: autocode-traffic    # data stream (needs an index template with data_stream)
      ca_certs: /etc/autocode/tls/ca.pem     # optional
      api_key_file: /etc/autocode/es-traffic.key  # optional; encoded API key, mode 0600
      batch_size: 500            # documents per _bulk request
      batch_max_bytes: 5242880
      request_timeout: 30
      poll_interval: 0.5         # seconds between spool polls when idle
      retry_initial: 0.5         # backoff while Elasticsearch is down / 429 / 5xx
      retry_max: 30
      compress: false            # gzip bulk bodies; default: only for a remote cluster

Record fields: ``@timestamp`` (request start, UTC), ``record_id`` (128-bit hex; also the ES
``_id``), ``worker_id``, ``client_ip``, ``server_ip``, ``proxy_host``, ``method``, ``scheme``,
``host``, ``port``, ``url``, ``http_version``, ``status``, ``request_headers``,
``response_headers`` (lowercase name -> value; map as ``flattened`` in the index template),
``request_bytes``, ``response_bytes``, ``duration_ms``, ``error``, ``kind`` (``http``),
``verdict`` (``allowed``; ``blocked`` when refused by policy, with ``reason``).

Other records (``kind``): ``tcp`` for a connection that is not HTTP, ``tls`` for a TLS
handshake the client aborted (pinned certificate, unknown CA), ``websocket`` for a WebSocket
connection after its HTTP upgrade: ``worker_id``, ``client_ip``, ``server_ip``, ``host``,
``port``, ``sni``, ``tls``, ``bytes_from_client``, ``bytes_from_server`` (and for WebSocket
``messages_from_client``, ``messages_from_server``; never bodies), ``duration_ms``,
``verdict``, ``reason``, ``error``.

Queue policy and failure behaviour: see ``autocode.traffic.writer`` and
``autocode.traffic.shipper``.
"""

from autocode.traffic.config import TrafficConfig, TrafficConfigError, load_config

__all__ = ["TrafficConfig", "TrafficConfigError", "load_config"]
