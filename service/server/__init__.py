"""The server process: the `vae-serve` command, the worker plan and supervisor, and what uvicorn lacks at the
socket (the connection guard, one write per small response)."""
