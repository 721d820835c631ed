"""testing/operations.py itself: a test gets exactly the facts it gives, or a loud failure."""

from __future__ import annotations

import pytest

from infra.facts import FileText, PathStates
from infra.operations import directory, file_from_host
from testing.operations import FakeDeploy, MissingFact, fact, run


def test_a_fact_the_test_did_not_give_fails_naming_it_and_those_given():
    with pytest.raises(MissingFact, match=r"orchestrator was asked fact\(PathStates, "
                                          r"paths=\('/srv',\)\).*fact\(PathStates, "
                                          r"paths=\('/other',\)\)"):
        run(directory, path="/srv", user="root", group="root", mode="755",
            facts={fact(PathStates, paths=("/other",)): {}})


def test_a_fact_of_another_host_is_that_hosts_alone():
    deploy = FakeDeploy({fact(FileText, path="/ca.crt"): "mine\n"}, host="worker1",
                        others={"orchestrator": {}})
    with pytest.raises(MissingFact, match="orchestrator was asked fact.FileText"):
        deploy.run(file_from_host, source="orchestrator", source_path="/ca.crt", path="/x")


def test_fact_keys_are_checked_against_the_facts_command():
    with pytest.raises(TypeError, match="PathStates.command does not take"):
        fact(PathStates, path="/srv")


def test_unknown_operation_arguments_fail_as_in_a_plan():
    with pytest.raises(TypeError):
        run(directory, path="/srv", user="root", group="root", mode="755", owner="root",
            facts={fact(PathStates, paths=("/srv",)): {}})
