"""The component contract: what components declare is what group_data, base, network,
the runtime install and validation use; a new component needs nothing but its module."""

from __future__ import annotations

import types
from typing import Annotated

import pytest

from infra.component import Component
from infra.inventory_file import group_defaults
from infra.settings import For, HostSettings, Port, Settings
from roles import CATALOGUE as components
from roles import orchestrator as orchestrator_role
from roles import worker as worker_role
from tasks import mitmproxy

ROLE_MODULES = {"orchestrator": orchestrator_role, "worker": worker_role}


@pytest.mark.parametrize("role", ["orchestrator", "worker"])
def test_every_listed_component_declares_itself_and_serves_the_role(role):
    for module in ROLE_MODULES[role].COMPONENTS:
        assert isinstance(module.COMPONENT, Component), module.__name__
        assert callable(getattr(module, role)), f"{module.__name__} has no {role}()"
        assert module.__name__ == f"tasks.{module.COMPONENT.name}"


def test_group_data_is_exactly_what_components_declare():
    orch, workers = group_defaults("orchestrator"), group_defaults("workers")
    settings = components.settings()
    for key, value in settings.items():
        assert orch[key] == value and workers[key] == value
    assert workers["agent_type"] == "claude-code" and "agent_type" not in orch
    assert orch["system_users"] == ["autocode", "autocode-proxy", "vault", "autocode-serve",
                                    "autocode-control"]
    assert workers["system_users"] == ["autocode"]
    assert orch["data_tree"]["logs/traffic/spool"][0] == "autocode-proxy"
    assert "logs/traffic" not in workers["data_tree"]
    assert "worker-artifacts/results" in workers["data_tree"]


def test_worker_ports_follow_the_owning_components_settings():
    data = {**group_defaults("workers"), "dns_port": 5353, "mitmproxy_port": 3128,
            "vault_port": 8300, "worker_runner": "systemd", "log_forwarding_port": 2600,
            "model_api_port": 8100, "control_worker_port": 7500}
    assert components.worker_ports(data) == [2600, 3128, 5353, 7500, 8100, 8300]
    assert components.worker_ports({**data, "worker_runner": "nomad"}) == [
        2600, 3128, 4646, 4647, 5353, 7500, 8100, 8300]
    assert 8100 not in components.worker_ports({**data, "model_serving": "disabled"})


def test_one_runtime_install_per_host_with_the_union_of_needs():
    orch = group_defaults("orchestrator")
    assert components.runtime_needs("orchestrator", orch) == (
        ("control", "proxy"), ("bcrypt>=4,<5", f"mitmproxy=={orch['mitmproxy_version']}"))
    assert components.runtime_needs("worker", group_defaults("workers")) == ((), ())
    # The pin follows the host's Python: mitmproxy 12 needs 3.12 (Debian 13, Ubuntu 24.04).
    old = ("bcrypt>=4,<5", "mitmproxy==11.0.2")  # 11 with passlib's bcrypt<5
    for python, pins in (([3, 11], old), ([3, 12], ("mitmproxy==12.3.1",)),
                         ([3, 13], ("mitmproxy==12.3.1",)), (None, old)):
        assert components.runtime_needs("orchestrator", orch, python)[1] == pins, python
    assert components.runtime_needs("orchestrator", {
        **orch, "mitmproxy_version_py312": None}, [3, 13])[1] == old


def test_every_components_check_runs_in_one_pass():
    data = {**group_defaults("orchestrator"), "worker_network": "not-a-net",
            "dns_upstreams": ["resolver.example"], "proxy_fail_closed": "yes",
            "data_root": "relative/path", "daily_budget_usd": 0, "timezone": "Mars/Base",
            "proxy_non_http": "sometimes"}
    problems = components.check_host("orchestrator", "orchestrator", data)
    text = "\n".join(problems)
    for field in ("worker_network", "dns_upstreams", "proxy_fail_closed", "data_root",
                  "daily_budget_usd", "timezone", "proxy_non_http"):
        assert f"orchestrator 'orchestrator': {field}: " in text, field
    assert len(problems) == 7, text


def test_an_unknown_setting_is_named_with_a_likely_fix():
    data = {**group_defaults("workers"), "worker_network": "10.0.1.0/24",
            "dns_upstream": ["9.9.9.9"]}
    problems = components.check_host("worker1", "worker", data)
    assert problems == ["worker 'worker1': dns_upstream: no component has this setting; did "
                        "you mean dns_port, dns_upstreams? Remove it, or see the settings in "
                        "settings/<component>.py"]


def test_traffic_config_is_built_as_data_and_keeps_odd_worker_names_strings():
    import yaml

    from autocode.traffic.config import parse_config

    data = {**group_defaults("orchestrator")}
    text = mitmproxy.traffic_config(HostSettings(data), {"10.0.1.11": "no", "10.0.1.12": "on",
                                           "10.0.1.13": "1.0"})
    parsed = parse_config(yaml.safe_load(text))
    assert parsed.workers == {"10.0.1.11": "no", "10.0.1.12": "on", "10.0.1.13": "1.0"}
    assert str(parsed.spool_dir) == f"{data['data_root']}/logs/traffic/spool"
    # Retention as group data says: a week of shipped copies, dead letters 90 days.
    assert (parsed.keep_shipped_segments, parsed.shipped_keep_days,
            parsed.dead_letter_keep_days) == (True, 7, 90)
    none_kept = parse_config(yaml.safe_load(mitmproxy.traffic_config(HostSettings(
        {**data, "traffic_shipped_keep_days": 0, "traffic_dead_letter_keep_days": None}), {})))
    assert (none_kept.keep_shipped_segments, none_kept.shipped_keep_days,
            none_kept.dead_letter_keep_days) == (False, None, None)


def test_bad_retention_days_are_refused_naming_the_inventory_field():
    data = {**group_defaults("orchestrator"), "worker_network": "10.0.1.0/24",
            "orchestrator_address": "10.0.1.1", "ssh_hostname": "10.0.0.10",
            "traffic_shipped_keep_days": -1, "traffic_dead_letter_keep_days": 0}
    text = "\n".join(components.check_host("orchestrator", "orchestrator", data))
    assert "traffic_shipped_keep_days: -1 is not a number of days" in text
    assert "traffic_dead_letter_keep_days: 0 is not a number of days" in text


def test_a_new_component_needs_only_its_module_and_one_line_per_role(monkeypatch):
    """A toy component, listed in the worker role: its setting becomes a default, its
    account and folder are created by base, its port opened, its check run."""
    class Toy(Settings):
        toy_port: Port = 7777
        """The toy's port."""
        toy_greeting: str = "hello"
        """What it says."""

        def rules(self, problems, host):
            if not self.toy_greeting:
                problems.add("toy_greeting", "empty; say something, e.g. hello")

    toy = types.ModuleType("tasks.toy")
    toy.COMPONENT = Component(
        name="toy",
        settings=Toy,
        system_users={"worker": ("toy",)},
        data_tree={"worker": {"toy": ("toy", "toy", "700")}},
        worker_ports=lambda toy: [toy.toy_port],
    )
    toy.worker = lambda: None
    monkeypatch.setattr(worker_role, "COMPONENTS", [*worker_role.COMPONENTS, toy])
    monkeypatch.setattr(orchestrator_role, "COMPONENTS", [*orchestrator_role.COMPONENTS, toy])
    workers = group_defaults("workers")
    assert workers["toy_greeting"] == "hello"
    assert workers["system_users"][-1] == "toy"
    assert workers["data_tree"]["toy"] == ("toy", "toy", "700")
    assert 7777 in components.worker_ports(workers)
    problems = components.check_host("worker1", "worker", {
        **workers, "worker_network": "10.0.1.0/24", "toy_greeting": ""})
    assert problems == ["worker 'worker1': toy_greeting: empty; say something, e.g. hello"]


def test_two_components_cannot_own_one_setting(monkeypatch):
    class Clash(Settings):
        dns_port: int = 5353

    clash = types.ModuleType("tasks.clash")
    clash.COMPONENT = Component(name="clash", settings=Clash)
    monkeypatch.setattr(worker_role, "COMPONENTS", [*worker_role.COMPONENTS, clash])
    with pytest.raises(ValueError, match="'dns_port' is declared by two components"):
        components.settings()


def test_component_declarations_name_only_known_roles():
    with pytest.raises(ValueError, match="unknown roles"):
        Component(name="bad", system_users={"workers": ("x",)})

    class Odd(Settings):
        odd: Annotated[int, For("workers")] = 1

    with pytest.raises(ValueError, match="unknown roles"):
        Component(name="bad", settings=Odd)



def test_a_bad_mitmproxy_pin_for_newer_pythons_is_refused_naming_the_field():
    data = {**group_defaults("orchestrator"), "worker_network": "10.0.1.0/24",
            "orchestrator_address": "10.0.1.1", "ssh_hostname": "10.0.0.10"}
    for bad in (12, "latest", ""):
        text = "\n".join(components.check_host("orchestrator", "orchestrator",
                                               {**data, "mitmproxy_version_py312": bad}))
        assert "mitmproxy_version_py312: " in text and "is not a version" in text, bad
    assert not components.check_host("orchestrator", "orchestrator",
                                     {**data, "mitmproxy_version_py312": None})
