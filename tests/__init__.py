"""The test suite: unit tests call handler and script code in-process; end-to-end tests (marked
e2e) start a real TorchServe on loopback (tests/support/servers.serving); a test not marked
e2e that starts one fails. Shared helpers live in tests/support, fixtures in
conftest.py; tests never import each other."""
