"""Defaults for workers: their components' role settings, and the system accounts and
data tree they declare (collected by infra/components.py)."""

from infra.components import role_settings as _role_settings

globals().update(_role_settings("worker"))
