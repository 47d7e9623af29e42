"""`meshnode reload` and SIGHUP: read the config files again and apply what can change live.

Services, log level, API token and event handlers apply at once; the other
settings are compared and named in a warning, since they need a restart
(a socket is bound, a name is gossiped). Everything is validated before
anything changes: a bad reload leaves the agent as it was.
"""

from __future__ import annotations

import dataclasses
import logging

from ..api.facade import ReloadError
from ..catalog.catalog import Catalog
from ..catalog.definitions import DefinitionError, parse_config_services
from ..config import AgentConfig, ConfigError, reload_config
from ..gossip.errors import LocalProtocolError
from ..logs import log, setup_logging

__all__ = ["RESTART_FIELDS", "reload_agent_config"]

_log = logging.getLogger("meshnode.agent")

# Settings a reload reads but cannot apply to a running agent.
RESTART_FIELDS = (
    "node_name",
    "bind",
    "advertise",
    "http",
    "data_dir",
    "datacenter",
    "tags",
    "encrypt_key",
)


def reload_agent_config(current: AgentConfig, catalog: Catalog) -> AgentConfig:
    """Apply the files' live settings to the agent; the config now in force.

    `ReloadError` (and nothing changed) when a file or a service is bad.
    """
    try:
        new = reload_config(current)
        services = parse_config_services(new.services)
    except (ConfigError, DefinitionError) as exc:
        raise ReloadError(str(exc)) from None
    try:
        catalog.sync_config(services)
    except (DefinitionError, LocalProtocolError) as exc:
        raise ReloadError(f"cannot register the configured services: {exc}") from None
    if new.log_level != current.log_level:
        setup_logging(new.log_level)
    restart_needed = [
        name for name in RESTART_FIELDS if getattr(new, name) != getattr(current, name)
    ]
    if restart_needed:
        log(
            _log,
            "warning",
            "config reloaded; some changes need a restart",
            fields=",".join(restart_needed),
        )
    else:
        log(_log, "info", "config reloaded")
    return dataclasses.replace(
        current,
        log_level=new.log_level,
        api_token=new.api_token,
        event_handlers=new.event_handlers,
        services=new.services,
    )
