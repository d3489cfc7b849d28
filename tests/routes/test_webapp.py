"""``/app/``: the page's files, their Content-Security-Policy, relative links, errors.

(What the page does in a browser is tested by ``tests/browser/flow.py``.)
"""

import os
import re
import urllib.parse

from indico.routes.webapp import APP_STATIC, CONTENT_SECURITY_POLICY
from tests.harness import ServerTest

FILES = {"": "text/html; charset=UTF-8", "index.html": "text/html; charset=UTF-8",
         "app.js": "text/javascript; charset=UTF-8", "charts.js": "text/javascript; charset=UTF-8",
         "app.css": "text/css; charset=UTF-8", "favicon.svg": "image/svg+xml; charset=UTF-8"}


def policy(header: str) -> dict[str, list[str]]:
    """A CSP header as ``{directive: [sources]}``."""
    parts = (part.split() for part in header.split(";") if part.strip())
    return {part[0]: part[1:] for part in parts}


class AppPageTest(ServerTest):

    def check_headers(self, response):
        directives = policy(response.headers["Content-Security-Policy"])
        self.assertEqual(directives["default-src"], ["'self'"])
        for name in ("script-src", "style-src", "img-src", "connect-src"):
            self.assertEqual(directives[name], ["'self'"], name)
        self.assertEqual(directives["object-src"], ["'none'"])
        self.assertEqual(directives["frame-ancestors"], ["'none'"])
        self.assertEqual(directives["base-uri"], ["'none'"])
        for sources in directives.values():
            for source in sources:
                self.assertNotIn(source, ("'unsafe-inline'", "'unsafe-eval'", "*", "data:"))
        self.assertEqual(response.headers["X-Content-Type-Options"], "nosniff")
        self.assertEqual(response.headers["X-Frame-Options"], "DENY")
        self.assertEqual(response.headers["Referrer-Policy"], "no-referrer")

    def test_every_file_is_served_with_its_type_and_the_strict_csp(self):
        for name, kind in FILES.items():
            with self.subTest(name=name):
                status, _, response = self.request("GET", "/app/" + name)
                self.assertEqual(status, 200)
                self.assertEqual(response.headers["Content-Type"], kind)
                self.assertEqual(response.headers["Cache-Control"], "no-cache")
                self.assertTrue(response.headers["Etag"])
                self.check_headers(response)
                with open(os.path.join(APP_STATIC, name or "index.html"), "rb") as handle:
                    self.assertEqual(response.body, handle.read())
        self.assertEqual(response.headers["Content-Security-Policy"], CONTENT_SECURITY_POLICY)

    def test_app_without_its_slash_redirects_relatively_so_a_prefix_is_kept(self):
        for method in ("GET", "HEAD"):
            with self.subTest(method=method):
                response = self.fetch("/app", method=method, follow_redirects=False,
                                      raise_error=False)
                self.assertEqual(response.code, 302)
                self.assertEqual(response.headers["Location"], "app/")
                self.check_headers(response)
        self.assertEqual(urllib.parse.urljoin("http://proxy/backend/app", "app/"),
                         "http://proxy/backend/app/")

    def test_a_missing_file_is_a_json_404_with_the_csp(self):
        status, body, response = self.request("GET", "/app/missing.js")
        self.assertError((status, body), 404, "NotFound", "Not Found")
        self.assertEqual(response.headers["Content-Type"], "application/json; charset=UTF-8")
        self.check_headers(response)

    def test_the_folder_cannot_be_escaped(self):
        status, _, response = self.request("GET", "/app/../../config.py")
        self.assertIn(status, (403, 404))
        self.assertNotIn(b"mongodb_uri", response.body)
        status, body, response = self.request("GET", "/app/%2e%2e/routes/webapp.py")
        self.assertError((status, body), 403, "Forbidden")
        self.check_headers(response)

    def test_another_method_is_a_json_405(self):
        status, body, response = self.request("POST", "/app/", {})
        self.assertError((status, body), 405, "MethodNotAllowed", "method POST is not allowed")
        self.assertEqual(response.headers["Allow"], "GET, HEAD, OPTIONS")
        self.check_headers(response)

    def test_the_page_has_no_inline_code_and_only_relative_links(self):
        # Relative, so that the page works behind deploy/nginx's /backend/ prefix too.
        html = self.request("GET", "/app/")[2].body.decode()
        self.assertNotRegex(html, r"<script(?![^>]*\bsrc=)[^>]*>")   # no inline script
        self.assertNotRegex(html, r"<style|\sstyle=|\son[a-z]+=")   # no inline style, no handler
        links = re.findall(r'(?:href|src)="([^"]+)"', html)
        self.assertEqual(sorted(links), ["#main", "app.css", "app.js", "charts.js",
                                         "favicon.svg"])
        resolved = {urllib.parse.urljoin("http://proxy/backend/app/", link) for link in links}
        self.assertTrue(all(url.startswith("http://proxy/backend/app/") for url in resolved))
        script = self.request("GET", "/app/app.js")[2].body.decode()
        # Every request goes to a path relative to the page (../<resource>/<action>, ../ws/jobs).
        self.assertEqual(re.findall(r'fetch\("([^"]*)"', script), ["../"])
        self.assertIn('new URL("../ws/jobs", window.location.href)', script)
        for source in (script, self.request("GET", "/app/charts.js")[2].body.decode()):
            # Values from the API go in as text: no HTML parsing, no eval.
            found = re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write"
                               r"|\beval\(|new Function|localStorage\.", source)
            self.assertEqual(found, [])
