"""The orchestrator's front door: the task store, its HTTP API (autocode-control) and the
clients of both sides (`autocode task ...` for operators, the worker's claim loop)."""
