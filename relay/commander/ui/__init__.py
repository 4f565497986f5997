"""The dashboard the commander serves at ``/ui/``: runs, a run's leases, curves, checkpoints, events and logs.

``install(app, api)`` adds its routes to the commander's application; everything else lives in this
package: sessions and CSRF (``sessions``, ``guard``), pages and actions (``routes``), the live feed
(``feed``, ``stream``), the files (``assets``, ``static/``) and what it reads from the commander
(``source``).
"""

from relay.commander.ui.routes import Dashboard, install

__all__ = ["Dashboard", "install"]
