"""Defaults for the orchestrator: model serving, secrets, logs, the proxy, Nomad server."""

# Served models (the seed's vLLM configuration). Each gets a model-weights/<name> folder.
models = {
    "qwen-2.5-coder-32b": {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85},
    "deepseek-r1-32b": {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85},
    "qwen-2.5-coder-14b": {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.85},
}

# Who writes where under data_root: path -> (owner, group, mode). The owner is the one
# service that writes there; readers get in through the group.
data_tree = {
    "": ("root", "root", "755"),
    "elasticsearch": ("elasticsearch", "elasticsearch", "750"),
    "elasticsearch/nodes": ("elasticsearch", "elasticsearch", "750"),
    "elasticsearch/indices": ("elasticsearch", "elasticsearch", "750"),
    "vault-data": ("vault", "vault", "700"),
    "model-weights": ("autocode", "autocode", "755"),
    "logs": ("root", "autocode", "755"),
    "logs/orchestrator": ("autocode", "autocode", "750"),
    "logs/workers": ("autocode", "autocode", "750"),
    "logs/traffic": ("autocode-proxy", "autocode", "750"),
    "financial": ("autocode", "autocode", "750"),
    "financial/transactions": ("autocode", "autocode", "750"),
    "financial/budgets": ("autocode", "autocode", "750"),
    "financial/reports": ("autocode", "autocode", "750"),
    "config": ("root", "autocode", "750"),
    "config/nomad": ("root", "root", "750"),
    "config/vault": ("vault", "vault", "750"),
    "config/agents": ("root", "autocode", "750"),
}

# System accounts this role needs before its packages arrive (the vendor packages reuse
# an existing account), so the data tree can be owned correctly from the first apply.
system_users = ["autocode", "autocode-proxy", "vault", "elasticsearch"]
