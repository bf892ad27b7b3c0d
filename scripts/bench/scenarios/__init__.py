"""Scenario runs against real servers (READY, overload, soak, slow clients) for RELIABILITY.md."""
