"""A bare Tornado handler, the baseline of benchmarks/api_bench.py.

``python benchmarks/bare_server.py PORT``: every POST parses its JSON body and
answers a small JSON object; nothing else (no database, no validation, no logging).
"""

import asyncio
import json
import sys

import tornado.web


class BareHandler(tornado.web.RequestHandler):
    def post(self, _path):
        body = json.loads(self.request.body or b"{}")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": 200, "data": {"ok": True, "keys": len(body)}}))


async def main(port):
    app = tornado.web.Application([(r"/(.*)", BareHandler)], log_function=lambda handler: None)
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
