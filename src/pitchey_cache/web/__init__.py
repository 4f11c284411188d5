"""The HTTP endpoints of the deployment guide, as an ASGI app."""
