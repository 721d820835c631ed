"""Defaults for every host: the settings each component declares in its module in tasks/
(`COMPONENT.settings`). An inventory overrides any of them (its `data:` sections)."""

from infra.components import settings as _settings

globals().update(_settings())
