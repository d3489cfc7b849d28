"""Parsing price files: the three layouts, both date formats, gzip, and every kind of bad file."""

import datetime
import gzip
import os
import shutil
import tempfile
import unittest

import numpy as np
from numpy.testing import assert_array_equal

from indico.services import price_files
from indico.services.price_files import FileRejected, parse_file


def days(*isodates):
    return np.array([price_files.date_to_day(value) for value in isodates], dtype=np.int32)


class FilesTest(unittest.TestCase):
    """Each test writes its own small files in a temporary directory."""

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="indico-price-files-")

    def tearDown(self):
        shutil.rmtree(self.directory, ignore_errors=True)

    def write(self, name, text, compress=False, raw=None):
        path = os.path.join(self.directory, name)
        data = raw if raw is not None else text.encode()
        with open(path, "wb") as handle:
            handle.write(gzip.compress(data) if compress else data)
        return path

    def assertRejected(self, path, line, reason_part, symbol=None):
        with self.assertRaises(FileRejected) as caught:
            parse_file(path, symbol)
        error = caught.exception
        self.assertEqual(error.line, line, error.message)
        self.assertIn(reason_part, error.reason)
        where = f"line {line}: " if line else ""
        self.assertTrue(error.message.startswith(f"{path}: {where}"), error.message)
        self.assertEqual(error.to_dict()["file"], path)
        self.assertEqual(error.status, 422)
        return error


class LayoutTest(FilesTest):

    def test_wide_iso_with_gaps(self):
        path = self.write("wide.csv", "Date,AAPL,msft\n"
                                      "2020-01-03,11.5,\n"
                                      "2020-01-02,10,20.25\n"
                                      "2020-01-06, null ,21\n")
        parsed = parse_file(path)
        self.assertEqual((parsed.layout, parsed.symbols, parsed.rows),
                         ("wide", ["AAPL", "MSFT"], 4))
        self.assertEqual((parsed.first, parsed.last),
                         (datetime.date(2020, 1, 2), datetime.date(2020, 1, 6)))
        aapl_days, aapl = parsed.series["AAPL"]
        assert_array_equal(aapl_days, days("2020-01-02", "2020-01-03"))
        assert_array_equal(aapl, [10.0, 11.5])
        msft_days, msft = parsed.series["MSFT"]
        assert_array_equal(msft_days, days("2020-01-02", "2020-01-06"))
        assert_array_equal(msft, [20.25, 21.0])
        self.assertEqual((aapl_days.dtype, aapl.dtype), (np.int32, np.float64))

    def test_long_any_column_order_case_insensitive_headers(self):
        path = self.write("long.csv", "PRICE, Date ,Symbol\n"
                                      "3.5,2021-02-01,brk.b\n"
                                      "1.25,2021-02-01,AAPL\n"
                                      "1.5,2021-02-02,AAPL\n")
        parsed = parse_file(path)
        self.assertEqual((parsed.layout, parsed.symbols, parsed.rows),
                         ("long", ["AAPL", "BRK.B"], 3))
        assert_array_equal(parsed.series["AAPL"][1], [1.25, 1.5])
        assert_array_equal(parsed.series["BRK.B"][0], days("2021-02-01"))

    def test_yahoo_symbol_from_file_name_and_adj_close(self):
        path = self.write("brk-b.csv.gz", "Date,Open,High,Low,Close,Adj Close,Volume\n"
                                          "2019-12-31,1,2,0.5,1.5,1.4,100\n"
                                          "2020-01-02,1,2,0.5,1.6,null,100\n", compress=True)
        parsed = parse_file(path)
        self.assertEqual((parsed.layout, parsed.symbols, parsed.rows), ("yahoo", ["BRK-B"], 1))
        assert_array_equal(parsed.series["BRK-B"][1], [1.4])

    def test_yahoo_without_adj_close_uses_close_and_symbol_option(self):
        path = self.write("download.csv", "date,open,high,low,close,volume\n"
                                          "2020-01-02,1,2,0.5,1.6,100\n")
        parsed = parse_file(path, "spy")
        self.assertEqual(parsed.symbols, ["SPY"])
        assert_array_equal(parsed.series["SPY"][1], [1.6])

    def test_seed_dates_gzip_by_content_bom_and_blank_lines(self):
        text = "\ufeffDate,XOM\n\n01-02-20,50\n12-31-99,40\n\n"
        path = self.write("prices.data", text, compress=True)
        parsed = parse_file(path)
        assert_array_equal(parsed.series["XOM"][0], days("1999-12-31", "2020-01-02"))
        assert_array_equal(parsed.series["XOM"][1], [40.0, 50.0])

    def test_mixed_iso_and_seed_dates_and_spaces(self):
        path = self.write("mixed.csv", "Date,KO\n 2020-01-02 , 1.5 \n01-03-20,1.6\n")
        parsed = parse_file(path)
        assert_array_equal(parsed.series["KO"][0], days("2020-01-02", "2020-01-03"))

    def test_the_shipped_sample(self):
        parsed = parse_file(os.path.join(os.path.dirname(price_files.__file__), "..", "data",
                                         "sp500_prices.csv.gz"))
        self.assertEqual(len(parsed.symbols), 20)
        self.assertEqual(parsed.rows, 20 * 8313)
        self.assertEqual((str(parsed.first), str(parsed.last)), ("1990-01-02", "2022-12-28"))


class RejectTest(FilesTest):

    def test_unknown_layout(self):
        path = self.write("x.csv", "when,AAPL\n2020-01-02,1\n")
        self.assertRejected(path, 1, "unknown layout")

    def test_long_with_an_extra_column(self):
        path = self.write("x.csv", "symbol,date,price,volume\nAAPL,2020-01-02,1,5\n")
        self.assertRejected(path, 1, "exactly the columns symbol, date, price")

    def test_unparseable_date(self):
        path = self.write("x.csv", "Date,AAPL\n2020-01-02,1\n2020-02-30,2\n")
        self.assertRejected(path, 3, "'2020-02-30' is not a date; write YYYY-MM-DD or MM-DD-YY")

    def test_missing_date(self):
        path = self.write("x.csv", "Date,AAPL\n2020-01-02,1\n,2\n")
        self.assertRejected(path, 3, "the date is missing")

    def test_unparseable_number(self):
        path = self.write("x.csv", "Date,AAPL,MSFT\n2020-01-02,1,2\n2020-01-03,1,\n"
                                   "2020-01-06,1,2.x\n")
        self.assertRejected(path, 4, "price '2.x' for MSFT is not a number")

    def test_zero_and_negative_prices(self):
        for value in ("0", "-1.5", "-0"):
            with self.subTest(value=value):
                path = self.write("x.csv", f"Date,AAPL\n2020-01-02,1\n2020-01-03,{value}\n")
                self.assertRejected(path, 3, f"price '{value}' for AAPL is not positive")

    def test_infinite_price(self):
        path = self.write("x.csv", "symbol,date,price\nAAPL,2020-01-02,inf\n")
        self.assertRejected(path, 2, "price 'inf' for AAPL is not a finite number")

    def test_duplicate_date_wide(self):
        path = self.write("x.csv", "Date,AAPL\n2020-01-02,1\n2020-01-03,2\n01-02-20,3\n")
        self.assertRejected(path, 4, "date 2020-01-02 appears twice (lines 2 and 4)")

    def test_duplicate_date_for_a_symbol_long(self):
        path = self.write("x.csv", "symbol,date,price\nAAPL,2020-01-02,1\nMSFT,2020-01-02,1\n"
                                   "aapl,2020-01-02,1\n")
        self.assertRejected(path, 4, "AAPL: date 2020-01-02 appears twice (lines 2 and 4)")

    def test_bad_symbols(self):
        path = self.write("x.csv", "Date,Apple Inc\n2020-01-02,1\n")
        self.assertRejected(path, 1, "column 'Apple Inc' is not a valid symbol")
        path = self.write("x.csv",
                          "symbol,date,price\nAAPL,2020-01-02,1\nTOOLONGSYMBOL,2020-01-02,1\n")
        self.assertRejected(path, 3, "'TOOLONGSYMBOL' is not a valid symbol")
        path = self.write("x.csv", "symbol,date,price\n,2020-01-02,1\n")
        self.assertRejected(path, 2, "the symbol is missing")

    def test_header_problems(self):
        path = self.write("x.csv", "Date,AAPL,aapl\n2020-01-02,1,2\n")
        self.assertRejected(path, 1, "column 'aapl' appears twice (columns 2 and 3)")
        path = self.write("x.csv", "Date,AAPL,\n2020-01-02,1,2\n")
        self.assertRejected(path, 1, "column 3 has no name")
        path = self.write("x.csv", "Date,date\n2020-01-02,2020-01-02\n")
        self.assertRejected(path, 1, "appears twice")
        path = self.write("x.csv", "Date,Open,High,Low,Close,Date_\n2020-01-02,1,1,1,1,1\n")
        self.assertRejected(path, 1, "more than one Date column")

    def test_ragged_rows(self):
        path = self.write("x.csv", "Date,AAPL,MSFT\n2020-01-02,1,2\n2020-01-03,1\n")
        self.assertRejected(path, 3, "2 fields where the header has 3")
        path = self.write("x.csv", "Date,AAPL\n2020-01-02,1,2\n")
        self.assertRejected(path, 2, "3 fields where the header has 2")

    def test_whole_file_problems(self):
        self.assertRejected(os.path.join(self.directory, "missing.csv"), None,
                            "cannot read the file")
        self.assertRejected(self.write("x.csv", ""), None, "the file is empty")
        self.assertRejected(self.write("x.csv", "\n \n"), None, "the file is empty")
        self.assertRejected(self.write("x.csv", "Date,AAPL\n"), None, "a header but no data")
        self.assertRejected(self.write("x.csv", "Date,AAPL\n2020-01-02,\n"), None,
                            "holds no prices")
        self.assertRejected(self.write("x.csv.gz", "", raw=b"\x1f\x8bnot gzip at all"), None,
                            "the gzip data is damaged")
        self.assertRejected(self.write("x.csv", "", raw=b"Date,AAPL\n2020-01-02,\xff1\n"), 2,
                            "not UTF-8 text")
        self.assertRejected(self.write("x.csv", "Date,AAPL\n2020-01-02,\"1\n"), 2,
                            "malformed CSV")

    def test_yahoo_symbol_rules(self):
        text = "Date,Open,High,Low,Close,Adj Close,Volume\n2020-01-02,1,2,0.5,1.6,1.5,100\n"
        self.assertRejected(self.write("my prices.csv", text), None,
                            "cannot tell the symbol from the file name 'my prices.csv'")
        self.assertRejected(self.write("AAPL.csv", text), None, "is not a valid symbol",
                            symbol="not valid")
        path = self.write("wide.csv", "Date,AAPL\n2020-01-02,1\n")
        self.assertRejected(path, 1, "--symbol is for Yahoo-style files; this file is wide",
                            symbol="AAPL")

    def test_long_values_are_shortened_in_messages(self):
        path = self.write("x.csv", "Date,AAPL\n2020-01-02," + "9" * 30 + "x" * 30 + "\n")
        error = self.assertRejected(path, 2, "is not a number")
        self.assertIn("...", error.reason)
        self.assertLess(len(error.reason), 100)


class HelpersTest(unittest.TestCase):

    def test_symbols(self):
        self.assertEqual(price_files.normalize_symbol(" brk.b "), "BRK.B")
        for bad in ("", "A B", "TOOLONGSYMB", "ÄPFEL", "A/B"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                price_files.normalize_symbol(bad)
        self.assertEqual(price_files.symbol_from_path("/x/rds-a.CSV.GZ"), "RDS-A")
        self.assertEqual(price_files.symbol_from_path("msft.txt"), "MSFT")
        self.assertIsNone(price_files.symbol_from_path("/x/.csv"))

    def test_days(self):
        self.assertEqual(price_files.date_to_day("1970-01-02"), 1)
        self.assertEqual(price_files.day_to_date(18262), datetime.date(2020, 1, 1))

    def test_help_names_the_layouts(self):
        for word in ("wide", "long", "yahoo", "Adj Close", "MM-DD-YY", "gzip"):
            self.assertIn(word, price_files.LAYOUTS_HELP)
