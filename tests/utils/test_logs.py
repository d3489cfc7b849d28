"""indico.utils.logs: the JSON lines of the formatter."""

import json
import logging
import unittest

from indico.utils.logs import JsonFormatter


def record(created, message="hello", **fields):
    entry = logging.LogRecord("indico.access", logging.INFO, __file__, 1, message, (), None)
    entry.created, entry.msecs = created, (created - int(created)) * 1000
    entry.fields = fields
    return entry


class JsonFormatterTest(unittest.TestCase):

    def test_each_line_has_its_own_time_though_the_second_is_kept_between_lines(self):
        formatter = JsonFormatter()
        lines = [json.loads(formatter.format(record(created))) for created in
                 (1764633600.25, 1764633600.999, 1764633601.0, 1764633599.5)]
        self.assertEqual([line["time"] for line in lines],
                         ["2025-12-02T00:00:00.250Z", "2025-12-02T00:00:00.999Z",
                          "2025-12-02T00:00:01.000Z", "2025-12-01T23:59:59.500Z"])

    def test_fields_and_values_json_cannot_encode(self):
        line = json.loads(JsonFormatter().format(record(0.0, status=200, when=object)))
        self.assertEqual(line["status"], 200)
        self.assertEqual(line["when"], str(object))
        self.assertEqual((line["level"], line["logger"], line["message"], line["request_id"]),
                         ("INFO", "indico.access", "hello", "-"))

    def test_an_integer_orjson_refuses_is_written_all_the_same(self):
        line = json.loads(JsonFormatter().format(record(0.0, count=2 ** 70, label=b"x")))
        self.assertEqual(line["count"], 2 ** 70)
        self.assertEqual(line["label"], "b'x'")
