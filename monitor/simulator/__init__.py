"""A faithful fake of Box's Doc Gen API (2025.0) for the demo, tests and benchmarks.

It shares no code with the Box client in `monitor.box`, not even models: both are written from
Box's spec, so each checks the other. Box routes behave as Box documents them; the control API
under /_sim (docs/simulator-control-api.md) shapes the simulated world.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.simulator.config import (
        AppConfig,
        OutcomeMix,
        SimulatorConfig,
        SteadyStreamConfig,
        TimelineConfig,
        UserConfig,
    )
    from monitor.simulator.server import (
        RunningSimulator,
        build_app,
        serve_forever,
        start_simulator,
    )
    from monitor.simulator.state import SimulatorState

# Where each name lives. Loaded on first use (PEP 562): `docgen-monitor once` reads the
# `simulate` command's options from `monitor.simulator.options` and must not pay for the server.
_HOMES = {
    **dict.fromkeys(
        ("AppConfig", "OutcomeMix", "SimulatorConfig", "SteadyStreamConfig", "TimelineConfig",
         "UserConfig"),
        "monitor.simulator.config",
    ),
    **dict.fromkeys(
        ("RunningSimulator", "build_app", "serve_forever", "start_simulator"),
        "monitor.simulator.server",
    ),
    "SimulatorState": "monitor.simulator.state",
}

__all__ = [
    "AppConfig",
    "OutcomeMix",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorState",
    "SteadyStreamConfig",
    "TimelineConfig",
    "UserConfig",
    "build_app",
    "serve_forever",
    "start_simulator",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
