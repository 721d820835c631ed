"""Model serving on the orchestrator: the GPU memory plan (plan.py), which runs in the
deploy's validation pass and on the host, and the Ray Serve app that serves what it placed."""
