"""Running the judged evaluation CLIs and scripts as real processes, for the tests of this folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from chat_server import ChatServer

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "v1_5" / "eval"


def env_for(server: ChatServer | None = None, key: str | None = "test", **extra: str) -> dict[str, str]:
    """This process's environment without OPENAI_*, then OPENAI_BASE_URL (the server's) and OPENAI_API_KEY."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    if server is not None:
        env["OPENAI_BASE_URL"] = server.base_url
    if key is not None:
        env["OPENAI_API_KEY"] = key
    env.update(extra)
    return env


def run_module(module: str, *args, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


def run_script(name: str, env: dict[str, str], *args) -> subprocess.CompletedProcess:
    """``bash scripts/v1_5/eval/<name>.sh ARGS``."""
    return subprocess.run(["bash", str(SCRIPTS / f"{name}.sh"), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
