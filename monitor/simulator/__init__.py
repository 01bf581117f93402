"""A faithful fake of Box's Doc Gen API (2025.0) for the demo, tests and benchmarks.

It shares no code with the Box client in `monitor.box`, not even models: both are written from
Box's spec, so each checks the other. Box routes behave as Box documents them; the control API
under /_sim (docs/simulator-control-api.md) shapes the simulated world.
"""

from monitor.simulator.config import (
    AppConfig,
    OutcomeMix,
    SimulatorConfig,
    SteadyStreamConfig,
    TimelineConfig,
    UserConfig,
)
from monitor.simulator.server import RunningSimulator, build_app, serve_forever, start_simulator
from monitor.simulator.state import SimulatorState

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
