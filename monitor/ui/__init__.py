"""The operator's status page, served by the daemon's HTTP server (see `page.py`): what is
gathered (`view.py`), how it is rendered (`templates/`), and its own CSS and script
(`static/`: no build step, no CDN)."""

from monitor.ui.page import StatusPage
from monitor.ui.view import AccountSources, PollingHealth, StatusSources

__all__ = ["AccountSources", "PollingHealth", "StatusPage", "StatusSources"]
