"""Defaults for every host: the fields of each component's settings model
(settings/<component>.py), collected by infra/components.py. An inventory overrides any of
them (its `data:` sections)."""

from roles import CATALOGUE as _CATALOGUE

globals().update(_CATALOGUE.settings())
