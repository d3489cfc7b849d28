"""What the price catalog and import tests share: a small file, a base class, stand-in stores."""

import datetime
import os
import shutil
import tempfile
import types

from indico.services.price_catalog import PriceCatalog
from indico.services.price_import import PriceImporter
from tests.harness import ServerTest

WIDE = ("Date,AAPL,MSFT\n"
        "2019-12-30,10,20\n"
        "2019-12-31,11,21\n"
        "2020-01-02,12,\n"
        "2020-01-03,13,23\n")
D = datetime.date


class PricesTest(ServerTest):
    """A PriceCatalog and a PriceImporter of its own on the test's database, files in a
    temporary directory."""

    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix="indico-prices-")
        self.catalog = PriceCatalog(self.db, self.config)
        self.importer = PriceImporter(self.db)

    def tearDown(self):
        shutil.rmtree(self.directory, ignore_errors=True)
        super().tearDown()

    def run_async(self, function, *args, **kwargs):
        return self.io_loop.run_sync(lambda: function(*args, **kwargs), timeout=30)

    def write(self, name, text):
        path = os.path.join(self.directory, name)
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def load(self, name, text, symbol=None, importer=None):
        importer = importer or self.importer
        return self.run_async(importer.import_file, self.write(name, text), symbol)

    def frame(self, symbols, start, end, catalog=None):
        return self.run_async((catalog or self.catalog).get_frame, symbols, start, end)

    def store(self):
        return self.snapshot("prices", "price_meta")

    def generations(self):
        return sorted({(doc["symbol"], doc["generation"]) for doc in self.find("prices")})


def replaced(module, **functions):
    """``module``'s functions with some replaced: a store that fails or loses a race on cue.

    Everything not replaced still runs against the real database.
    """
    names = {name: getattr(module, name) for name in dir(module) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, **functions})


def failing(exception):
    """An async function that raises ``exception``."""
    async def fail(*args, **kwargs):
        raise exception
    return fail


def flaky(real, calls, before=None):
    """A stand-in for ``real`` that counts calls and runs ``before(n)`` first."""
    async def call(*args, **kwargs):
        calls.append(1)
        if before is not None:
            result = await before(len(calls), *args, **kwargs)
            if result is not None:
                return result
        return await real(*args, **kwargs)
    return call


def gone_once(real, calls):
    """A stand-in for ``price_meta.get_catalog``: the first catalog asked for was just
    replaced and deleted (None), later ones are read for real. Counts calls in ``calls``."""
    async def call(*args):
        calls.append(1)
        return None if len(calls) == 1 else await real(*args)
    return call
