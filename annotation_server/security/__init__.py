"""Deployment safety: which browsers may call the API (CORS) and whether the server may listen where it was
told to with logins off. Light modules only: the CLI imports them before the server is built."""
