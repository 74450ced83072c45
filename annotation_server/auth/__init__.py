"""Optional logins and role-based access (off by default), in the shape MONAI Label clients expect.

users.py keeps accounts (scrypt hashes) in SQLite, tokens.py signs expiring JWTs, service.py ties them
together on `Services.auth`, policy.py says which role each route needs, dependencies.py enforces it,
routes.py serves /auth/*, cli.py is `annotate-server users ...`.

Only the light roles module is imported here: `annotate-server --help` must stay fast.
"""

from annotation_server.auth.roles import ANONYMOUS_ADMIN, Principal, Role

__all__ = ["ANONYMOUS_ADMIN", "Principal", "Role"]
