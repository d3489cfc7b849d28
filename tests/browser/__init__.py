"""Browser tests of the page at ``/app/``: a real headless Chromium driven by Playwright.

They are a step of their own in ``make test`` (``tests/run_suite.py``), not part
of the nose2 suite: the module is ``flow.py``, which discovery (``test*.py``)
does not pick up.
"""
