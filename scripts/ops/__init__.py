"""Operate a TorchServe: start/stop it (serve), probe it (healthcheck), scale it (manage), check
what it serves (inspect_mar), talk to it (client), read its config and keys (server_config)."""
