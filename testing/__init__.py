"""Test doubles and helpers shared by tests/ and bench/: importable, never installed on
hosts, and never a stand-in for one of our own components.

- `elasticsearch_double`, `vault_double`: protocol-level doubles of vendor servers this
  machine cannot run (Elasticsearch, Vault), named as doubles; each test using one has a
  twin against a real server named by environment variable.
- `mitmdump`: a real mitmdump process with our addon, a local upstream and a client.
- `standins`: stand-in executables for the agent CLIs (vendor tools needing accounts).
- `traffic`: traffic configs, records and spool segments for the logger's tests.
- `tls`: a test CA and server certificate for 127.0.0.1; `deploy`, `figures`: running the
  deploy and recording the figures a test run measures.
"""
