"""Agent classes against stand-in CLIs that print each tool's documented output shape."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from autocode.agents import (
    AgentBinaryNotFoundError,
    AgentFactory,
    AiderAgent,
    ClaudeCodeAgent,
    CursorCliAgent,
    QwenCoderAgent,
    Task,
)
from autocode.agents.types import FAILED, REFUSED_BUDGET, SUCCEEDED
from autocode.budget import BudgetLedger
from testing.standins import make_standin, read_records

CLAUDE_SUCCESS = """
print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                  "duration_ms": 1234, "num_turns": 4, "result": "Fixed the bug.",
                  "session_id": "sess-1", "total_cost_usd": 0.0123,
                  "usage": {"input_tokens": 1500, "output_tokens": 300}}))
"""


def test_factory_maps_the_four_agent_types(agent_config_for):
    assert AgentFactory.AGENTS == {"claude-code": ClaudeCodeAgent, "aider": AiderAgent,
                                   "qwen-coder": QwenCoderAgent, "cursor-cli": CursorCliAgent}
    agent = AgentFactory.create_agent("aider", agent_config_for())
    assert isinstance(agent, AiderAgent)


def test_factory_rejects_unknown_type_listing_valid_ones(agent_config_for):
    with pytest.raises(ValueError) as caught:
        AgentFactory.create_agent("gpt-engineer", agent_config_for())
    for kind in ("claude-code", "aider", "qwen-coder", "cursor-cli", "gpt-engineer"):
        assert kind in str(caught.value)


def test_claude_success_reads_cost_and_passes_budget_flags(tmp_path, agent_config_for,
                                                           record_file, monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "must-not-reach-the-agent")
    binary = make_standin(tmp_path / "bin", "claude", CLAUDE_SUCCESS)
    ledger = BudgetLedger.in_memory()
    agent = ClaudeCodeAgent(agent_config_for(binary_path=str(binary)), ledger)

    result = agent.execute_task(Task("t1", "fix the bug"))

    assert result.status == SUCCEEDED, result.error
    assert result.cost_usd == Decimal("0.0123") and result.cost_source == "agent-reported"
    assert (result.num_turns, result.session_id) == (4, "sess-1")
    assert (result.input_tokens, result.output_tokens) == (1500, 300)
    assert result.summary == "Fixed the bug."
    assert (result.logs_path / "stdout.log").read_bytes().startswith(b"{")
    (call,) = read_records(record_file)
    argv = call["argv"][1:]
    assert argv[:4] == ["-p", "fix the bug", "--output-format", "json"]
    assert argv[argv.index("--max-turns") + 1] == "50"
    assert argv[argv.index("--max-budget-usd") + 1] == "10.0000"
    # -p runs deny edits and commands unless a permission mode allows them
    assert argv[argv.index("--permission-mode") + 1] == "bypassPermissions"
    env = call["env"]
    # the SDK appends /v1/messages itself, so it gets the endpoint's root
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    for alias in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_HAIKU_MODEL",
                  "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL",
                  "ANTHROPIC_SMALL_FAST_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"):
        assert env[alias] == "qwen-test"
    assert "VAULT_TOKEN" not in env
    # No key file: a placeholder, or the CLI stops at "Not logged in" before any call.
    assert env["ANTHROPIC_API_KEY"] == "none"
    assert ledger.spent() == Decimal("0.0123")

    # The next task gets what is left of today's budget as its cap.
    agent.execute_task(Task("t2", "again"))
    argv = read_records(record_file)[1]["argv"]
    assert argv[argv.index("--max-budget-usd") + 1] == "9.9877"
    assert ledger.spent() == Decimal("0.0246")


def test_claude_cap_is_the_smaller_of_task_limit_and_remaining(tmp_path, agent_config_for,
                                                                record_file):
    binary = make_standin(tmp_path / "bin", "claude", CLAUDE_SUCCESS)
    agent = ClaudeCodeAgent(agent_config_for(binary_path=str(binary)))
    agent.execute_task(Task("t1", "p", max_cost_usd=Decimal("2.5"), max_turns=7))
    argv = read_records(record_file)[0]["argv"]
    assert argv[argv.index("--max-budget-usd") + 1] == "2.5000"
    assert argv[argv.index("--max-turns") + 1] == "7"


@pytest.mark.parametrize("endpoint, expected", [
    ("https://internet.lab/v1", "https://internet.lab"),
    ("https://internet.lab/v1/", "https://internet.lab"),
    ("http://10.0.0.1:8000", "http://10.0.0.1:8000"),
    ("https://gw.example/anthropic/v1", "https://gw.example/anthropic"),
    ("https://gw.example/v10", "https://gw.example/v10"),
])
def test_claude_base_url_is_the_endpoint_root(endpoint, expected):
    from autocode.agents.claude_code import anthropic_base_url

    assert anthropic_base_url(endpoint) == expected


def test_claude_permission_mode_can_be_overridden_by_extra_args(tmp_path, agent_config_for,
                                                                record_file):
    binary = make_standin(tmp_path / "bin", "claude", CLAUDE_SUCCESS)
    config = agent_config_for(binary_path=str(binary),
                              extra_args=("--permission-mode", "acceptEdits"))
    ClaudeCodeAgent(config).execute_task(Task("t1", "p"))
    argv = read_records(record_file)[0]["argv"]
    # the CLI takes the last occurrence
    assert argv[-2:] == ["--permission-mode", "acceptEdits"]


def test_claude_found_first_on_path(tmp_path, agent_config_for, record_file, monkeypatch):
    bin_dir = tmp_path / "bin"
    make_standin(bin_dir, "claude", CLAUDE_SUCCESS)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    result = ClaudeCodeAgent(agent_config_for()).execute_task(Task("t1", "p"))
    assert result.status == SUCCEEDED
    assert read_records(record_file)[0]["argv"][0] == str(bin_dir / "claude")


def test_claude_error_result_is_a_failure_but_still_charged(tmp_path, agent_config_for):
    binary = make_standin(tmp_path / "bin", "claude", """
        print(json.dumps({"type": "result", "subtype": "error_max_turns", "is_error": True,
                          "num_turns": 50, "session_id": "s", "total_cost_usd": 1.5}))
    """)
    ledger = BudgetLedger.in_memory()
    result = ClaudeCodeAgent(agent_config_for(binary_path=str(binary)), ledger).execute_task(
        Task("t1", "p"))
    assert result.status == FAILED and "error_max_turns" in result.error
    assert ledger.spent() == Decimal("1.5")


def test_budget_spent_refuses_task_without_running_the_cli(tmp_path, agent_config_for,
                                                          record_file):
    binary = make_standin(tmp_path / "bin", "claude", CLAUDE_SUCCESS)
    ledger = BudgetLedger.in_memory()
    ledger.charge(idempotency_key="k", worker_id="worker-1", agent="claude-code", task_id="x",
                  amount_usd=Decimal("10"), source="metered")
    agent = ClaudeCodeAgent(agent_config_for(binary_path=str(binary)), ledger)
    assert not agent.check_budget().allowed
    result = agent.execute_task(Task("t1", "p"))
    assert result.status == REFUSED_BUDGET
    assert read_records(record_file) == []


@pytest.mark.parametrize("body, expected", [
    ('print("{not json")', "unparsable output"),
    ("print('')", "no output"),
    ('print(json.dumps({"type": "result"}))', "neither"),
    ('print(json.dumps({"type": "result", "is_error": False, "total_cost_usd": "lots"}))',
     "total_cost_usd"),
])
def test_claude_malformed_output_is_a_failed_result(tmp_path, agent_config_for, body, expected):
    binary = make_standin(tmp_path / "bin", "claude", body)
    result = ClaudeCodeAgent(agent_config_for(binary_path=str(binary))).execute_task(
        Task("t1", "p"))
    assert result.status == FAILED
    assert expected in result.error


def test_nonzero_exit_is_a_failed_result_with_stderr_tail(tmp_path, agent_config_for):
    binary = make_standin(tmp_path / "bin", "claude", """
        sys.stderr.write("noise\\n" * 5000 + "Error: invalid API key\\n")
        sys.exit(3)
    """)
    result = ClaudeCodeAgent(agent_config_for(binary_path=str(binary))).execute_task(
        Task("t1", "p"))
    assert result.status == FAILED and result.exit_code == 3
    assert "exit code 3" in result.error and "invalid API key" in result.error
    assert len(result.error) < 3000  # a tail, not the whole stream


def test_missing_workdir_is_a_failed_result(tmp_path, agent_config_for):
    binary = make_standin(tmp_path / "bin", "claude", CLAUDE_SUCCESS)
    result = ClaudeCodeAgent(agent_config_for(binary_path=str(binary))).execute_task(
        Task("t1", "p", workdir=tmp_path / "nope"))
    assert result.status == FAILED and "does not exist" in result.error


@pytest.mark.parametrize("agent_class, package", [
    (ClaudeCodeAgent, "@anthropic-ai/claude-code"),
    (AiderAgent, "aider-chat"),
    (QwenCoderAgent, "@qwen-code/qwen-code"),
    (CursorCliAgent, "cursor.com/install"),
])
def test_missing_binary_names_the_package(tmp_path, agent_config_for, monkeypatch,
                                          agent_class, package):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    agent = agent_class(agent_config_for())
    with pytest.raises(AgentBinaryNotFoundError) as caught:
        agent.execute_task(Task("t1", "p"))
    assert package in str(caught.value)
    assert agent.default_binary in str(caught.value)


def test_configured_binary_path_that_does_not_exist(tmp_path, agent_config_for):
    agent = ClaudeCodeAgent(agent_config_for(binary_path=str(tmp_path / "nope" / "claude")))
    with pytest.raises(AgentBinaryNotFoundError, match="at that path"):
        agent.resolve_binary()


AIDER_STANDIN = """
log = sys.argv[sys.argv.index("--analytics-log") + 1]
with open(log, "w") as handle:
    handle.write(json.dumps({"event": "launched", "properties": {}}) + "\\n")
    for cost, prompt, completion in ((0.003, 1000, 200), (0.002, 800, 100)):
        handle.write(json.dumps({"event": "message_send", "user_id": "u", "time": 1,
            "properties": {"main_model": "openai/qwen-test", "edit_format": "diff",
                           "prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion, "cost": cost,
                           "total_cost": cost}}) + "\\n")
    handle.write(os.environ.get("EXTRA_LINE", ""))
print("Applied edit to app.py")
"""


def test_aider_reads_cost_and_tokens_from_analytics_log(tmp_path, agent_config_for,
                                                        record_file):
    key_file = tmp_path / "model-key"
    key_file.write_text("sk-model-key-123\n")
    binary = make_standin(tmp_path / "bin", "aider", AIDER_STANDIN)
    ledger = BudgetLedger.in_memory()
    agent = AiderAgent(agent_config_for(binary_path=str(binary), api_key_file=key_file), ledger)

    result = agent.execute_task(Task("t1", "add a test"))

    assert result.status == SUCCEEDED, result.error
    assert result.cost_usd == Decimal("0.005")  # exact: Decimal, not float addition
    assert (result.input_tokens, result.output_tokens, result.num_turns) == (1800, 300, 2)
    assert "Applied edit" in result.summary
    (call,) = read_records(record_file)
    argv = call["argv"][1:]
    assert argv[:2] == ["--message", "add a test"]
    for flag in ("--yes-always", "--no-auto-commits", "--no-check-update",
                 "--analytics-disable", "--no-gitignore", "--no-show-release-notes",
                 "--no-show-model-warnings", "--no-detect-urls", "--no-pretty",
                 "--no-fancy-input"):
        assert flag in argv
    assert argv[argv.index("--model") + 1] == "openai/qwen-test"
    assert argv[argv.index("--openai-api-base") + 1] == "http://127.0.0.1:9/v1"
    # histories in the run folder, not the repository
    for flag in ("--chat-history-file", "--input-history-file"):
        assert argv[argv.index(flag) + 1].startswith(str(result.logs_path))
    # the model's metadata from a file, so Aider does not fetch a price list from GitHub
    metadata = json.loads(open(argv[argv.index("--model-metadata-file") + 1]).read())
    assert metadata["openai/qwen-test"]["litellm_provider"] == "openai"
    assert call["env"]["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert call["env"]["OPENAI_API_KEY"] == "sk-model-key-123"
    assert "sk-model-key-123" not in " ".join(argv)
    assert ledger.spent() == Decimal("0.005")


def test_aider_malformed_analytics_log_is_a_failure(tmp_path, agent_config_for, monkeypatch):
    monkeypatch.setenv("EXTRA_LINE", "{truncated\n")
    binary = make_standin(tmp_path / "bin", "aider", AIDER_STANDIN)
    result = AiderAgent(agent_config_for(binary_path=str(binary))).execute_task(Task("t", "p"))
    assert result.status == FAILED and "analytics log line 4" in result.error


def test_aider_without_a_successful_model_call_is_a_failure(tmp_path, agent_config_for):
    # What aider 0.86 does when the endpoint's certificate is not trusted: it retries,
    # prints the error and exits 0, with no message_send event in its analytics log.
    binary = make_standin(tmp_path / "bin", "aider", """
        log = sys.argv[sys.argv.index("--analytics-log") + 1]
        with open(log, "w") as handle:
            handle.write(json.dumps({"event": "launched", "properties": {}}) + "\\n")
            handle.write(json.dumps({"event": "message_send_starting", "properties": {}}) + "\\n")
        print("litellm.InternalServerError: OpenAIException - Connection error.")
    """)
    result = AiderAgent(agent_config_for(binary_path=str(binary))).execute_task(Task("t", "p"))
    assert result.status == FAILED and result.exit_code == 0
    assert "no successful model call" in result.error and "Connection error" in result.error


def test_aider_without_analytics_log_is_a_failure(tmp_path, agent_config_for):
    binary = make_standin(tmp_path / "bin", "aider", 'print("done")')
    result = AiderAgent(agent_config_for(binary_path=str(binary))).execute_task(Task("t", "p"))
    assert result.status == FAILED and "no analytics log" in result.error


QWEN_STANDIN = """
events = [
    {"type": "system", "subtype": "init", "session_id": "q-1", "model": "qwen-test"},
    {"type": "assistant", "message": {"content": [{"type": "text", "text": "working"}]}},
]
if not os.environ.get("QWEN_NO_RESULT"):
    events.append({"type": "result", "subtype": "success", "is_error": False,
                   "num_turns": 3, "result": "All tests pass.", "session_id": "q-1",
                   "usage": {"input_tokens": 900, "output_tokens": 120, "total_tokens": 1020}})
print(json.dumps(events))
"""


def test_qwen_reads_final_result_element(tmp_path, agent_config_for, record_file):
    binary = make_standin(tmp_path / "bin", "qwen", QWEN_STANDIN)
    ledger = BudgetLedger.in_memory()
    result = QwenCoderAgent(agent_config_for(binary_path=str(binary)), ledger).execute_task(
        Task("t1", "make tests pass"))
    assert result.status == SUCCEEDED, result.error
    assert (result.input_tokens, result.output_tokens, result.num_turns) == (900, 120, 3)
    assert result.session_id == "q-1" and result.summary == "All tests pass."
    assert result.cost_usd is None  # no cost in the output: metering is the only source
    assert ledger.charges() == []
    (call,) = read_records(record_file)
    assert call["argv"][1:] == ["-p", "make tests pass", "--output-format", "json",
                                "--approval-mode", "yolo", "--auth-type", "openai",
                                "--max-session-turns", "50"]
    env = call["env"]
    assert env["QWEN_USAGE_STATISTICS_ENABLED"] == "false"
    assert env["QWEN_TELEMETRY_ENABLED"] == "false"
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:9/v1"
    assert env["OPENAI_MODEL"] == "qwen-test" and env["OPENAI_API_KEY"]


def test_qwen_array_without_result_is_a_failure(tmp_path, agent_config_for, monkeypatch):
    monkeypatch.setenv("QWEN_NO_RESULT", "1")
    binary = make_standin(tmp_path / "bin", "qwen", QWEN_STANDIN)
    result = QwenCoderAgent(agent_config_for(binary_path=str(binary))).execute_task(
        Task("t1", "p"))
    assert result.status == FAILED and "no element of type 'result'" in result.error


def test_cursor_reports_no_cost_and_spend_comes_from_metering(tmp_path, agent_config_for,
                                                              record_file):
    binary = make_standin(tmp_path / "bin", "cursor-agent", """
        print(json.dumps({"type": "result", "subtype": "success", "is_error": False,
                          "duration_ms": 10, "result": "Done.", "session_id": "c-1"}))
    """)
    ledger = BudgetLedger.in_memory()
    agent = CursorCliAgent(agent_config_for(binary_path=str(binary)), ledger)
    result = agent.execute_task(Task("t1", "refactor"))
    assert result.status == SUCCEEDED and result.cost_usd is None
    assert read_records(record_file)[0]["argv"][1:] == [
        "-p", "--force", "refactor", "--output-format", "json"]
    assert ledger.charges() == []

    ledger.charge(idempotency_key="meter-1", worker_id="worker-1", agent="cursor-cli",
                  task_id="t1", amount_usd="0.42", source="metered")
    report = agent.report_spending()
    assert report["spent_usd"] == "0.42" and report["remaining_usd"] == "9.58"
    assert report["cost_source"] == "metered-only" and "metered" in report["note"]
    assert "reports no cost" in CursorCliAgent.__doc__


def test_report_spending_for_cost_reporting_agent(agent_config_for):
    report = ClaudeCodeAgent(agent_config_for()).report_spending()
    assert report["cost_source"] == "agent-reported" and "note" not in report
    assert json.loads(json.dumps(report))["daily_budget_usd"] == "10"


def test_claude_key_comes_from_the_key_file_or_the_service_environment(
        tmp_path, agent_config_for, record_file, monkeypatch):
    binary = make_standin(tmp_path / "bin", "claude", CLAUDE_SUCCESS)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-the-unit")
    ClaudeCodeAgent(agent_config_for(binary_path=str(binary))).execute_task(Task("t1", "x"))
    key_file = tmp_path / "key"
    key_file.write_text("from-the-file\n")
    ClaudeCodeAgent(agent_config_for(binary_path=str(binary), api_key_file=key_file)
                    ).execute_task(Task("t2", "x"))
    first, second = read_records(record_file)
    assert first["env"]["ANTHROPIC_API_KEY"] == "from-the-unit"
    assert second["env"]["ANTHROPIC_API_KEY"] == "from-the-file"
    assert "from-the-file" not in " ".join(second["argv"])
