"""The container image, as far as it can be checked without a Docker engine: hadolint passes, the
Dockerfile agrees with the config it ships and the package it installs, and the wheel it installs
builds, installs into a clean environment, and runs (console script, plugins, the HEALTHCHECK)."""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.harness import command_passes, free_port, run_until_healthy

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A binary the test extras install into this venv (or found on PATH)."""
    found = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, args in instructions(DOCKERFILE.read_text()):
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, args))
    return result


def final(word: str) -> list[str]:
    return [args for w, args in stages()[-1] if w == word]


def shipped_config() -> dict[str, object]:
    (copy,) = [a for a in final("COPY") if a.endswith("/etc/docgen-monitor/config.yaml")]
    source = copy.split()[0]
    config: dict[str, object] = yaml.safe_load((ROOT / source).read_text())
    return config


def test_hadolint_passes_the_dockerfile() -> None:
    result = subprocess.run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_really_linting(tmp_path: Path) -> None:
    """A Dockerfile with known faults fails, so a green run above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\nCMD curl localhost\n")
    result = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert "DL3008" in result.stdout or "DL3015" in result.stdout, result.stdout


def test_the_image_builds_in_one_stage_and_runs_slim_without_compilers() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    runtime_from = all_stages[-1][0][1]
    assert "-slim" in runtime_from and " AS " in runtime_from.upper()
    runs = " ".join(final("RUN"))
    for forbidden in ("gcc", "build-essential", "apt-get install", "make "):
        assert forbidden not in runs
    assert "--no-cache-dir" in runs and "--no-index" in runs  # nothing fetched at runtime build


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    (user,) = final("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert f"--uid {uid}" in " ".join(final("RUN"))


def test_entrypoint_command_port_volume_and_healthcheck_agree_with_what_it_ships() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(final("ENTRYPOINT")[0]) == ["docgen-monitor"]
    assert "docgen-monitor" in scripts
    assert json.loads(final("CMD")[0]) == ["run", "--config", "/etc/docgen-monitor/config.yaml"]
    config = shipped_config()
    port = str(config["http"]["listen"]).rpartition(":")[2]  # type: ignore[index]
    assert final("EXPOSE") == [port]
    (volume,) = final("VOLUME")
    state_dir = str(Path(str(config["state"]["url"]).removeprefix("sqlite:///")).parent)  # type: ignore[index]
    assert json.loads(volume) == [state_dir]
    (health,) = final("HEALTHCHECK")
    assert f"127.0.0.1:{port}/healthz" in health


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides."""
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatch(c, pat) or fnmatch.fnmatch(c, pat.replace("**/", ""))
               for c in candidates):
            ignored = not negate
    return ignored


def test_every_file_the_build_copies_exists_and_is_not_dockerignored() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for stage in stages():
        for word, args in stage:
            if word == "COPY" and "--from" not in args:
                sources += shlex.split(args)[:-1]
    assert sources
    for source in sources:
        for path in [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            assert path.exists(), rel
            assert not dockerignored(rel, patterns), rel
    for kept_out in (".venv/bin/python", "tests/test_e2e.py", "state.db", ".git/HEAD"):
        assert dockerignored(kept_out, patterns), kept_out


# -- the wheel the image installs ------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built as the build stage builds it, installed with its
    dependencies into a clean venv as the runtime stage installs it; yields that venv's bin."""
    work = tmp_path_factory.mktemp("image")
    wheels = work / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir",
                    str(wheels), str(ROOT)], check=True, timeout=300, capture_output=True)
    (wheel,) = wheels.glob("docgen_monitor-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, timeout=600, capture_output=True)
    return venv / "bin"


def test_the_installed_console_script_runs_from_the_wheel_not_the_source_tree(
    installed: Path, tmp_path: Path
) -> None:
    out = subprocess.run([str(installed / "docgen-monitor"), "--version"], capture_output=True,
                         text=True, timeout=60, check=True, cwd=tmp_path)
    assert out.stdout.startswith("docgen-monitor ")
    where = subprocess.run([str(installed / "python"), "-c",
                            "import monitor; print(monitor.__file__)"],
                           capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)
    assert where.stdout.startswith(str(installed.parent))


def test_the_installed_package_validates_the_config_the_image_ships(
    installed: Path, tmp_path: Path
) -> None:
    """check-config resolves the built-in notifier types through the wheel's entry points."""
    env = {"PATH": "/usr/bin:/bin", "BOX_CLIENT_ID": "id", "BOX_CLIENT_SECRET": "secret",
           "BOX_ENTERPRISE_ID": "1", "AUDIT_WEBHOOK_URL": "https://hooks.example.com/docgen",
           "AUDIT_WEBHOOK_SECRET": "s", "SLACK_BOT_TOKEN": "xoxb-1", "SMTP_PASSWORD": "p"}
    (copy,) = [a for a in final("COPY") if a.endswith("/etc/docgen-monitor/config.yaml")]
    result = subprocess.run([str(installed / "docgen-monitor"), "check-config",
                             str(ROOT / copy.split()[0])], capture_output=True, text=True,
                            timeout=60, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "OK (4 notifier(s), 3 route(s))" in result.stdout
    bare = subprocess.run([str(installed / "docgen-monitor"), "check-config",
                           str(ROOT / copy.split()[0])], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, check=False)
    assert bare.returncode == 2 and "BOX_CLIENT_SECRET is not set" in bare.stderr


async def test_the_healthcheck_command_passes_against_the_installed_daemon(
    installed: Path, tmp_path: Path
) -> None:
    """The image's HEALTHCHECK command, run as written (the port aside) against the installed
    daemon; Box is unreachable on purpose: /healthz says the process answers, nothing more."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "box": {"base_url": "http://127.0.0.1:9", "auth": {"method": "developer_token",
                                                          "token": "t"}},
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "http": {"listen": f"127.0.0.1:{port}"}, "log": {"format": "json"}}))
    (health,) = final("HEALTHCHECK")
    command = json.loads(health.partition("CMD ")[2])
    command = [str(installed / "python"), *command[1:]]
    command[-1] = command[-1].replace(":9464/", f":{port}/")

    argv = [str(installed / "docgen-monitor"), "run", "--config", str(config)]
    code = await run_until_healthy(argv, command, tmp_path / "daemon.log", cwd=tmp_path)
    assert code == 0
    assert not await command_passes(command)  # and it fails once nothing answers
