"""The test suite, grouped by the code's areas (handler, packaging, ops, deploy, client, bench):
tests/unit/<area>/ call handler and script code in-process; tests/e2e/<area>/ (marked e2e)
start a real TorchServe on loopback (tests/support/servers.serving); a test not marked e2e that
starts one fails. Shared helpers live in tests/support, fixtures in
conftest.py; tests never import each other."""
