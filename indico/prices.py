"""The price importer: ``indico-prices import FILE...`` (also ``python -m indico.prices``).

It reads the same ``INDICO_*`` configuration as the server. Without
``INDICO_MONGODB_URI`` it attaches to the embedded database of the data
directory (the one ``make run`` started), or starts it for the time of the
import; a server running meanwhile sees the new prices on its next request.

Each file is checked whole, then stored whole (see
:mod:`indico.services.price_files` for the layouts). One line per file goes
to standard output; a rejected file's reason to standard error. Exit codes:
0 all files imported, 1 a file was rejected (the others are still imported),
2 a usage or configuration error, 3 the database failed, 130 interrupted.
"""

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

import tqdm
from pymongo.errors import PyMongoError

from config import Config
from indico import error
from indico.db import open_database
from indico.error import ConfigError
from indico.services.price_files import LAYOUTS_HELP, FileRejected
from indico.services.price_import import PriceImporter

EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_INTERRUPTED = 130
EPILOG = f"""\
{LAYOUTS_HELP}

The database is the server's: INDICO_MONGODB_URI and INDICO_DATABASE, or the
embedded one under INDICO_DATA_DIR (attached to if `make run` is serving).
Exit status: 0 all imported, 1 a file was rejected (the others are imported),
2 usage or configuration error, 3 database error, 130 interrupted."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; exits 2 with the usage on a mistake."""
    parser = argparse.ArgumentParser(
        prog="indico-prices", description="Manage the price store of indico.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    importer = commands.add_parser(
        "import", help="import price files (CSV or CSV.gz)",
        description="Import adjusted closes from CSV or gzip-compressed CSV files.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    importer.add_argument("files", nargs="+", metavar="FILE", help="a price file")
    importer.add_argument("--symbol", help="the ticker of a Yahoo-style file "
                                           "(default: from the file name); one FILE only")
    importer.add_argument("--quiet", action="store_true",
                          help="no progress bar and no summary lines; errors only")
    args = parser.parse_args(argv)
    if args.symbol is not None and len(args.files) != 1:
        parser.error("--symbol applies to one FILE; import the others separately")
    return args


async def import_files(importer: PriceImporter, paths: Sequence[str], symbol: str | None = None,
                       quiet: bool = False, out: TextIO | None = None,
                       err: TextIO | None = None) -> int:
    """Import ``paths`` one by one; report each.

    Args:
        importer: a PriceImporter.
        paths: the files.
        symbol: the ticker of a single Yahoo-style file.
        quiet: no progress bar and no summaries.
        out, err: streams for summaries and rejections (stdout, stderr if None).

    Returns:
        the number of rejected files.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    show_bar = not quiet and err.isatty()
    rejected = 0
    for path in paths:
        bar = tqdm.tqdm(desc=str(path), unit=" prices", unit_scale=True, file=err,
                        disable=not show_bar, leave=False)

        def advance(count: int, total: int, bar: tqdm.tqdm = bar) -> None:
            bar.total = total
            bar.update(count)
        try:
            summary = await importer.import_file(path, symbol, progress=advance)
        except FileRejected as exc:
            rejected += 1
            bar.close()
            err.write(f"rejected {exc.message}\n")
            continue
        bar.close()
        if not quiet:
            out.write(summary.describe() + "\n")
    return rejected


async def run(config: Config, args: argparse.Namespace, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """Open the database (as the server does: :func:`indico.db.open_database`), import.

    The embedded database is not watched: a database restarted here would be
    stopped when the import ends, under a server that attached to it meanwhile.
    If it dies, the import fails (:data:`EXIT_DATABASE`) and the server's own
    watcher restarts it.

    Returns:
        the exit code: 0, or :data:`EXIT_REJECTED` when a file was rejected.
    """
    async with open_database(config, watch=False) as database:
        rejected = await import_files(PriceImporter(database.db), args.files, args.symbol,
                                      args.quiet, out, err)
    return EXIT_REJECTED if rejected else 0


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Console entry point ``indico-prices``.

    Args:
        argv: the arguments (``sys.argv[1:]`` if None).
        environ: the ``INDICO_*`` settings (``os.environ`` if None).
        out, err: streams for summaries and errors (stdout, stderr if None).
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    err = sys.stderr if err is None else err
    try:
        config = Config.from_environ(environ)
    except ConfigError as exc:
        err.write(f"indico-prices: configuration error: {exc}\n")
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="indico-prices: %(message)s")
    try:
        return asyncio.run(run(config, args, out, err))
    except (PyMongoError, RuntimeError, error.IndicoError) as exc:
        err.write(f"indico-prices: {exc}\n")
        return EXIT_DATABASE
    except KeyboardInterrupt:
        # asyncio.run cancelled the import: a file being written is stored whole
        # or not at all (PriceImporter._commit removes what it staged).
        err.write("indico-prices: interrupted; the files reported above are stored, "
                  "the one being imported is stored whole or not at all\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
