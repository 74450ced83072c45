"""Which role each route needs: one table for the whole API, so the rules can be read (and tested) at once.

Rules match a request's method and its route *template* (`/infer/{model}`, not the concrete path), first
match wins; a trailing slash is ignored. A route nobody listed falls back to `user` for reads and `admin`
for writes, so an endpoint added later is never writable by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from annotation_server.auth.roles import Role

READ = frozenset({"GET", "HEAD"})
WRITE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str]
    pattern: str  # fnmatch over the route template; '*' also spans '/'
    role: Role | None  # None: open to anyone, no token needed


RULES: tuple[Rule, ...] = (
    # open: load balancers and people finding their way
    Rule(READ, "/health", None),
    Rule(READ, "", None),  # the landing page "/"
    # reads that expose more than one study at a time, or server internals
    Rule(READ, "/logs", Role.admin),
    Rule(READ, "/datastore/dataset", Role.admin),
    Rule(READ, "/audit", Role.admin),
    Rule(READ, "/projects/*/report*", Role.adjudicator),  # agreement between readers: not for the readers
    Rule(READ, "*", Role.user),
    # review
    Rule(WRITE, "/fl/queue/*/approve", Role.reviewer),
    Rule(WRITE, "/fl/queue/*/exclude", Role.reviewer),
    # multi-reader projects (readers' own routes are under "annotating")
    Rule(WRITE, "/projects", Role.lead),
    Rule(WRITE, "/projects/*/cases/*/consensus", Role.adjudicator),
    Rule(WRITE, "/projects/*/cases/*/adjudicate", Role.adjudicator),
    Rule(WRITE, "/projects/*/cases/*/accept-consensus", Role.lead),
    # running the site
    Rule(WRITE, "/train*", Role.admin),
    Rule(WRITE, "/scoring*", Role.admin),
    Rule(WRITE, "/batch/*", Role.admin),  # batch inference: start, stop (MONAI Label: admin)
    Rule(WRITE, "/models/*", Role.admin),
    Rule(frozenset({"DELETE"}), "/datastore*", Role.admin),
    # annotating
    Rule(WRITE, "/infer/*", Role.annotator),
    Rule(WRITE, "/activelearning/*", Role.annotator),
    Rule(WRITE, "/session*", Role.annotator),
    Rule(WRITE, "/interactive/*", Role.annotator),
    Rule(WRITE, "/datastore*", Role.annotator),
    Rule(WRITE, "/projects/*/next", Role.annotator),
    Rule(WRITE, "/projects/*/cases/*/label", Role.annotator),
)

FALLBACK_READ = Role.user
FALLBACK_WRITE = Role.admin


def required_role(method: str, route_path: str) -> Role | None:
    """The role `method route_path` needs, or None when the route is open."""
    method = method.upper()
    path = route_path.rstrip("/")
    for rule in RULES:
        if method in rule.methods and fnmatchcase(path, rule.pattern):
            return rule.role
    return FALLBACK_READ if method in READ else FALLBACK_WRITE
