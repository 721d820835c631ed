"""Defaults for every host. An inventory overrides any of them (its `data:` sections)."""

# Layout on the hosts (the seed's directory structure).
data_root = "/mnt/data/autocode"
install_dir = "/opt/autocode"
config_dir = "/etc/autocode"

# The platform's own service account: runs the worker agent and the model server.
service_user = "autocode"
service_home = "/var/lib/autocode"

project_id = "autocode"
timezone = "UTC"
daily_budget_usd = 50.0

# Local paths (on the control machine) of CA certificates every host must trust, e.g.
# an intercepting egress proxy's. Installed under /usr/local/share/ca-certificates/autocode.
extra_ca_certs: list[str] = []

base_packages = ["ca-certificates", "curl", "gnupg", "python3-venv", "iptables", "acl"]
apt_cache_seconds = 3600

# The network the workers live on; the orchestrator is its gateway.
worker_network = None
worker_network6 = None

# Orchestrator service ports.
vault_port = 8200
vault_cluster_port = 8201
elasticsearch_port = 9200
mitmproxy_port = 8080
dns_port = 53
nomad_http_port = 4646
nomad_rpc_port = 4647
nomad_serf_port = 4648
model_api_port = 8000

# Pinned versions; override per inventory to upgrade deliberately.
vault_version = "1.18.3"
nomad_version = "1.9.3"
elasticsearch_version = "8.16.1"
filebeat_version = "8.16.1"
mitmproxy_version = "11.0.2"
ray_version = "2.40.0"
vllm_version = "0.6.6"

# Upstream resolvers for the orchestrator's DNS forwarder; empty: its own resolv.conf's.
dns_upstreams: list[str] = []

# The transparent proxy. Unaudited egress is worse than none: when its spool cannot be
# written, new flows get a 503 unless this is False.
proxy_fail_closed = True
# Local paths of CA certificates the proxy trusts upstream, beyond the system store.
proxy_upstream_ca_certs: list[str] = []
