"""Defaults for workers: Nomad clients running one coding agent each."""

agent_type = "claude-code"

data_tree = {
    "": ("root", "root", "755"),
    "logs": ("root", "autocode", "755"),
    "logs/workers": ("autocode", "autocode", "750"),
    "financial": ("autocode", "autocode", "750"),
    "financial/transactions": ("autocode", "autocode", "750"),
    "financial/budgets": ("autocode", "autocode", "750"),
    "financial/reports": ("autocode", "autocode", "750"),
    "worker-artifacts": ("autocode", "autocode", "750"),
    "worker-artifacts/projects": ("autocode", "autocode", "750"),
    "worker-artifacts/code": ("autocode", "autocode", "750"),
    "worker-artifacts/results": ("autocode", "autocode", "750"),
    "config": ("root", "autocode", "750"),
    "config/nomad": ("root", "root", "750"),
    "config/agents": ("root", "autocode", "750"),
}

system_users = ["autocode"]
