"""Defaults for workers: their components' settings for this role only, and the system
accounts and data tree they declare (collected by infra/components.py)."""

from roles import CATALOGUE as _CATALOGUE

globals().update(_CATALOGUE.role_settings("worker"))
