"""Running the real coding agents non-interactively against gate (or the mock directly).

Each agent gets a fresh HOME / config directory, telemetry and update checks off, and a proxy
that goes nowhere (`http://127.0.0.1:9`) for everything but loopback, so an agent that tried to
reach the internet would fail rather than silently succeed. Binaries come from AGENTS_BIN
(tests/agents/node_modules/.bin, installed by tests/agents/run.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e_support import MockRecord, MockUpstream

GEMINI_UPSTREAM_KEY = "gemini-upstream-test-key"

CLAUDE_MODEL = "claude-sonnet-4-5"  # a model Claude Code knows
OPENAI_REASONING_MODEL = "gpt-5-mini"  # unknown to Claude Code; refuses `max_tokens`
OPENAI_CHAT_ONLY_MODEL = "llama-3.3-70b"  # served by an upstream without /v1/responses
GEMINI_MODEL = "gemini-2.5-flash"
ALL_MODELS = [CLAUDE_MODEL, OPENAI_REASONING_MODEL, OPENAI_CHAT_ONLY_MODEL, GEMINI_MODEL]

AGENT_DEADLINE_S = 180.0
DEAD_PROXY = "http://127.0.0.1:9"


@dataclass
class Workspace:
    root: Path  # the agent's working directory, holding notes.txt
    home: Path  # the agent's HOME
    canary: str  # the only line of notes.txt

    @property
    def notes(self) -> Path:
        return self.root / "notes.txt"


@dataclass
class AgentRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"{' '.join(self.args[:2])} exited {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


def agent_bin(name: str) -> Path:
    base = os.environ.get("AGENTS_BIN")
    path = Path(base) / name if base else Path(__file__).resolve().parent / "node_modules" / ".bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run tests/agents/run.sh (it installs the agents with npm ci)")
    return path


def base_env(ws: Workspace) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(ws.home),
        "TERM": "dumb",
        "NO_COLOR": "1",
        "CI": "true",
        "LANG": "C.UTF-8",
        # Anything that is not loopback goes to a port where nothing listens.
        "HTTPS_PROXY": DEAD_PROXY,
        "HTTP_PROXY": DEAD_PROXY,
        "https_proxy": DEAD_PROXY,
        "http_proxy": DEAD_PROXY,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    return env


def run_agent(args: list[str], env: dict[str, str], cwd: Path) -> AgentRun:
    try:
        done = subprocess.run(
            args, env=env, cwd=str(cwd), capture_output=True, stdin=subprocess.DEVNULL, timeout=AGENT_DEADLINE_S
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        err = (e.stderr or b"").decode(errors="replace")
        pytest.fail(f"{args[0]} did not finish within {AGENT_DEADLINE_S}s\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-4000:]}")
    return AgentRun(args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def run_claude(ws: Workspace, base_url: str, key: str, model: str, prompt: str) -> AgentRun:
    """`claude -p` with the Read tool pre-approved."""
    env = base_env(ws)
    env.update(
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_API_KEY=key,
        CLAUDE_CONFIG_DIR=str(ws.home / ".claude"),
        # The background "small/fast" model goes to the same routed model.
        ANTHROPIC_SMALL_FAST_MODEL=model,
        ANTHROPIC_DEFAULT_HAIKU_MODEL=model,
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_BUG_COMMAND="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_DISABLE_TERMINAL_TITLE="1",
    )
    args = [str(agent_bin("claude")), "-p", prompt, "--model", model, "--allowedTools", "Read", "--output-format", "text"]
    return run_agent(args, env, ws.root)


def run_codex(ws: Workspace, base_url: str, key: str, model: str, prompt: str) -> AgentRun:
    """`codex exec` with a custom model provider (Responses wire API) pointed at `base_url`."""
    codex_home = ws.home / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(
        "\n".join(
            [
                f"model = {json.dumps(model)}",
                'model_provider = "gate"',
                "check_for_update_on_startup = false",
                "",
                "[model_providers.gate]",
                'name = "Gate"',
                f"base_url = {json.dumps(base_url)}",
                'env_key = "GATE_API_KEY"',
                'wire_api = "responses"',
                "request_max_retries = 0",
                "stream_max_retries = 0",
                "",
                "[analytics]",
                "enabled = false",
                "",
            ]
        )
    )
    env = base_env(ws)
    env.update(CODEX_HOME=str(codex_home), GATE_API_KEY=key)
    args = [
        str(agent_bin("codex")),
        "exec",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "--color",
        "never",
        prompt,
    ]
    return run_agent(args, env, ws.root)


def run_gemini(ws: Workspace, base_url: str, key: str, model: str, prompt: str) -> AgentRun:
    """`gemini -p` with GOOGLE_GEMINI_BASE_URL pointed at `base_url` and the file tool approved."""
    settings_dir = ws.home / ".gemini"
    settings_dir.mkdir(exist_ok=True)
    (settings_dir / "settings.json").write_text(
        json.dumps(
            {
                "privacy": {"usageStatisticsEnabled": False},
                "telemetry": {"enabled": False},
                "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
                # The API-key method; GOOGLE_GEMINI_BASE_URL then points its client at gate.
                "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
            }
        )
    )
    env = base_env(ws)
    env.update(GOOGLE_GEMINI_BASE_URL=base_url, GEMINI_API_KEY=key, GEMINI_CLI_NO_RELAUNCH="true")
    args = [str(agent_bin("gemini")), "-p", prompt, "-m", model, "--yolo", "--output-format", "text"]
    return run_agent(args, env, ws.root)


def tool_results_with(records: list[MockRecord], text: str) -> list[MockRecord]:
    """The recorded requests whose body carries `text` (the tool's output went back upstream)."""
    return [r for r in records if text.encode() in r.body]


def script_tool_call(mock: MockUpstream, tool: str, arguments: dict[str, Any]) -> None:
    """Every request that offers `tool` (and does not end in a tool result) gets a call to it."""
    mock.behave(with_tool=tool, tool_arguments=arguments)
