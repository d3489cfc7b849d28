"""The services: business rules, ownership and quotas, with no tornado imports.

``Services`` bundles the service objects that ``make_app`` builds once and
hands to every handler through the route table.
"""

import dataclasses


@dataclasses.dataclass
class Services:
    """The service objects of one application."""

    auth: object
    users: object
    prices: object = None
    portfolio: object = None
    jobs: object = None
    events: object = None
