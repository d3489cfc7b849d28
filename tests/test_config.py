"""config.py: INDICO_* variables, defaults, and errors that name the variable."""

import unittest

from config import Config
from indico.error import ConfigError


class ConfigTest(unittest.TestCase):

    def test_safe_defaults(self):
        config = Config.from_environ({})
        self.assertEqual(config.address, "127.0.0.1")
        self.assertEqual(config.port, 8000)
        self.assertEqual(config.cors_origins, [])
        self.assertEqual(config.trusted_proxies, [])
        self.assertEqual(config.body_limit, 64 * 1024)
        self.assertEqual(config.mongodb_uri, "")
        self.assertEqual((config.argon2_memory_kib, config.argon2_time_cost,
                          config.argon2_parallelism), (19456, 2, 1))
        self.assertEqual(config.session_ttl, 7 * 24 * 3600)

    def test_session_cache_is_on_only_where_one_host_is_sure(self):
        self.assertEqual(Config.from_environ({}).session_cache, 5.0)  # embedded database
        remote = {"INDICO_MONGODB_URI": "mongodb://db.example.com/"}
        self.assertEqual(Config.from_environ(remote).session_cache, 0.0)
        self.assertEqual(Config.from_environ({**remote, "INDICO_SESSION_CACHE": "2"})
                         .session_cache, 2.0)
        self.assertEqual(Config.from_environ({"INDICO_SESSION_CACHE": "0"}).session_cache, 0.0)
        with self.assertRaises(ConfigError) as caught:
            Config.from_environ({"INDICO_SESSION_CACHE": "301"})
        self.assertIn("INDICO_SESSION_CACHE", str(caught.exception))

    def test_reads_the_injected_mapping(self):
        config = Config.from_environ({
            "INDICO_PORT": "8001", "INDICO_CORS_ORIGINS": "https://a.example, http://b:8080",
            "INDICO_LOG_LEVEL": "debug", "INDICO_DEBUG": "true", "PATH": "/bin",
            "INDICO_BODY_LIMIT": "2048"})
        self.assertEqual(config.port, 8001)
        self.assertEqual(config.cors_origins, ["https://a.example", "http://b:8080"])
        self.assertEqual(config.log_level, "DEBUG")
        self.assertTrue(config.debug)
        self.assertEqual(config.body_limit, 2048)

    def test_overrides_win(self):
        config = Config.from_environ({"INDICO_PORT": "8001"}, port=9000, address=None)
        self.assertEqual((config.port, config.address), (9000, "127.0.0.1"))

    def assertConfigError(self, environ, variable, part):
        with self.assertRaises(ConfigError) as caught:
            Config.from_environ(environ)
        message = str(caught.exception)
        self.assertTrue(message.startswith(variable + ":"), message)
        self.assertIn(part, message)

    def test_bad_values_name_the_variable(self):
        self.assertConfigError({"INDICO_PORT": "eighty"}, "INDICO_PORT", "'eighty'")
        self.assertConfigError({"INDICO_PORT": "70000"}, "INDICO_PORT", "less than or equal")
        self.assertConfigError({"INDICO_LOG_LEVEL": "LOUD"}, "INDICO_LOG_LEVEL", "one of")
        self.assertConfigError({"INDICO_CORS_ORIGINS": "*"}, "INDICO_CORS_ORIGINS",
                               "not an origin")
        self.assertConfigError({"INDICO_CORS_ORIGINS": "https://a.example/"},
                               "INDICO_CORS_ORIGINS", "trailing slash")
        self.assertConfigError({"INDICO_DATABASE": "a/b"}, "INDICO_DATABASE", "pattern")
        self.assertConfigError({"INDICO_DEBUG": "maybe"}, "INDICO_DEBUG", "boolean")

    def test_unknown_variable_is_refused(self):
        self.assertConfigError({"INDICO_PROT": "8001"}, "INDICO_PROT", "unknown setting")

    def test_data_path_is_absolute(self):
        self.assertTrue(Config.from_environ({"INDICO_DATA_DIR": "rel"}).data_path.startswith("/"))
