"""indico: a JSON API to sign up, optimize stock portfolios and keep the results.

The package is layered: ``routes`` (HTTP) -> ``services`` (rules) ->
``optimization`` (numerics) and ``db`` (one module per collection). The
application is wired in ``indico.app.make_app``; the process is started by
``indico.server.main``.
"""

__version__ = "0.1.0"
