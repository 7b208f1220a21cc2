"""Running the edge agent as a process: logging, signals, the final report line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from dataclasses import asdict

from simultrain.shared.errors import ModelMismatch, ProtocolVersionMismatch, SimulTrainError

from .agent import EdgeAgent, EdgeReport
from .settings import EdgeSettings
from .state import EXIT_STATE_ERROR, EdgeStateError

__all__ = ["EXIT_CONFIG", "run", "run_agent"]

log = logging.getLogger("simultrain.edge")

# sysexits.h EX_CONFIG, the status of an unusable state directory too: the systemd unit's
# RestartPreventExitStatus=78 keeps an agent that cannot succeed until an operator acts from
# a restart loop — a cloud of another protocol version (4000) or model (4003), PROTOCOL.md §7.
EXIT_CONFIG = EXIT_STATE_ERROR


async def run_agent(settings: EdgeSettings) -> EdgeReport:
    agent = EdgeAgent(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # First signal: stop producing, drain what is in flight, leave cleanly. Without a
        # state directory the agent keeps unacknowledged batches only in memory, so draining
        # is what loses nothing; with one, a drain cut short loses nothing either.
        loop.add_signal_handler(sig, agent.stop)
    try:
        return await agent.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(settings: EdgeSettings) -> int:
    """Run until the configured steps are done (or a signal); print ``DONE {json}``."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: a heartbeat a second would drown the agent's log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        report = asyncio.run(run_agent(settings))
    except EdgeStateError as exc:
        # Needs an operator: the systemd unit does not restart on this status.
        log.error("edge state: %s", exc)
        return EXIT_STATE_ERROR
    except (ProtocolVersionMismatch, ModelMismatch) as exc:
        log.error("%s", exc)  # one line: what the cloud said, and that nothing is retried
        return EXIT_CONFIG
    except SimulTrainError as exc:
        log.error("%s", exc)
        return 1
    print("DONE " + json.dumps(asdict(report)), flush=True)
    return 0
