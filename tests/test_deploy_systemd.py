"""deploy/systemd: the unit passes `systemd-analyze verify` (with its ExecStart pointed at this
venv's real console script), its offline security review stays in the "OK" band, and it runs as
the dedicated user, reloads with SIGHUP and writes only its state directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import EXIT_CONFIG

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNIT = DEPLOY / "docgen-monitor.service"
SYSUSERS = DEPLOY / "docgen-monitor.sysusers"
INSTALLED_SCRIPT = "/opt/docgen-monitor/bin/docgen-monitor"
EXPOSURE_THRESHOLD = 20  # systemd-analyze's scale: 20 means an exposure of 2.0 ("OK" band)

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (.ci/run installs it)")


def local_unit(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with its ExecStart pointing at this venv's docgen-monitor, so that verify checks
    a real executable; the unit name is kept, as the security review reports by name."""
    script = Path(sys.executable).parent / "docgen-monitor"
    assert script.exists()
    path = tmp_path / UNIT.name
    path.write_text((text or UNIT.read_text()).replace(INSTALLED_SCRIPT, str(script)))
    return path


def service_section() -> dict[str, list[str]]:
    """[Service] as key -> every value given (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@needs_systemd
def test_systemd_analyze_verify_passes_without_a_warning(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(local_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@needs_systemd
def test_verify_reports_a_misspelt_directive(tmp_path: Path) -> None:
    """So that the silence above means something."""
    typo = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    result = subprocess.run(["systemd-analyze", "verify", str(local_unit(tmp_path, typo))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert "Unknown key" in result.stderr and "ProtectSytem" in result.stderr


@needs_systemd
def test_the_offline_security_review_is_in_the_ok_band(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                             f"--threshold={EXPOSURE_THRESHOLD}", str(local_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Overall exposure level for docgen-monitor.service" in result.stdout


def test_the_unit_runs_as_its_dedicated_user_with_the_usual_hardening() -> None:
    service = service_section()
    (user,) = service["User"]
    assert user not in {"root", "0"} and service["Group"] == [user]
    sysusers = [line.split() for line in SYSUSERS.read_text().splitlines()
                if line and not line.startswith("#")]
    assert [(row[0], row[1]) for row in sysusers] == [("u", user)]
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes",
                       "StateDirectory": "docgen-monitor", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": ""}.items():
        assert service[key] == [value], key


def test_the_unit_reloads_with_sighup_and_runs_the_daemon_on_its_config() -> None:
    service = service_section()
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    (start,) = service["ExecStart"]
    assert start == f"{INSTALLED_SCRIPT} run --config /etc/docgen-monitor/config.yaml"
    assert service["ExecStartPre"] == [f"{INSTALLED_SCRIPT} check-config "
                                       "/etc/docgen-monitor/config.yaml"]
    # a bad config is not retried: the CLI's exit code for it
    assert service["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]

