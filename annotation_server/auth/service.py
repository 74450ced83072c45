"""AuthService: logins, token checks, and the identity of each request; one per server, on `Services`.

With auth off (the default) nothing is opened or created and every request acts as a built-in admin, as
in MONAI Label, so a single-user workstation needs no setup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from annotation_server.audit.log import AuditLog
from annotation_server.auth.roles import ANONYMOUS_ADMIN, Principal, Role
from annotation_server.auth.throttle import LoginThrottle, TooManyAttemptsError
from annotation_server.auth.tokens import SECRET_FILENAME, InvalidTokenError, TokenSigner, load_or_create_secret
from annotation_server.auth.users import USERS_FILENAME, UserStore, private_dir
from annotation_server.settings import Settings


class AuthenticationError(Exception):
    """Login or token refused; the message is safe to show the client and says what to do."""


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    principal: Principal


def users_path(data_dir: Path) -> Path:
    return data_dir / "auth" / USERS_FILENAME


def open_user_store(settings: Settings) -> UserStore:
    """The user store of a data folder (created on first use); the server and the `users` CLI share it."""
    return UserStore(users_path(settings.data_dir))


class AuthService:
    def __init__(
        self,
        enabled: bool,
        users: UserStore | None = None,
        signer: TokenSigner | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        if enabled and (users is None or signer is None):
            raise ValueError("auth enabled without a user store and a token signer")
        self.enabled = enabled
        self.users = users
        self.signer = signer
        self.throttle = LoginThrottle()
        self.audit = audit  # logins, failures and logouts are recorded here (None: not recorded)

    @classmethod
    def from_settings(cls, settings: Settings, audit: AuditLog | None = None) -> AuthService:
        if not settings.auth_enabled:
            return cls(enabled=False, audit=audit)
        folder = private_dir(settings.data_dir / "auth")
        given = settings.auth_secret.get_secret_value() if settings.auth_secret is not None else None
        secret = given or load_or_create_secret(folder / SECRET_FILENAME)
        return cls(True, open_user_store(settings), TokenSigner(secret, settings.auth_token_expiry_s), audit)

    def close(self) -> None:
        if self.users is not None:
            self.users.close()

    def login(self, username: str, password: str, address: str = "unknown") -> IssuedToken:
        """A token for the user; TooManyAttemptsError while this name must wait after failures from `address`."""
        assert self.users is not None and self.signer is not None
        try:
            self.throttle.check(username, address)
        except TooManyAttemptsError as exc:
            self._record("auth.login_throttled", username, address, retry_after_s=exc.retry_after_s)
            raise
        user = self.users.authenticate(username, password)
        if user is None:
            self.throttle.failed(username, address)
            self._record("auth.login_failed", username, address)
            raise AuthenticationError(
                "wrong user name or password; check both (names are case-sensitive) or ask the site admin "
                "to reset it with `annotate-server users passwd NAME`"
            )
        self.throttle.succeeded(username, address)
        self._record("auth.login", user.username, address, role=user.role.value)
        principal = Principal(username=user.username, role=user.role)
        token = self.signer.issue(user.username, principal.roles, user.generation)
        return IssuedToken(access_token=token, expires_in=self.signer.lifetime_s, principal=principal)

    def principal(self, token: str | None) -> Principal:
        """Who a bearer token belongs to, with the roles the user has *now* (a removed user, a changed
        password or a changed role takes effect on the next request, not when the token expires)."""
        if not self.enabled:
            return ANONYMOUS_ADMIN
        assert self.users is not None and self.signer is not None
        if not token:
            raise AuthenticationError("Not authenticated")
        try:
            claims = self.signer.verify(token)
        except InvalidTokenError as exc:
            raise AuthenticationError(f"{exc}; log in again with POST /auth/token") from None
        user = self.users.get(claims.username)
        if user is None:
            raise AuthenticationError(f"user '{claims.username}' no longer exists; ask the site admin")
        if user.generation != claims.generation:
            raise AuthenticationError("the password changed since this token was issued; log in again")
        if self.users.is_revoked(claims.token_id):
            raise AuthenticationError("this token was logged out; log in again with POST /auth/token")
        return Principal(username=user.username, role=user.role)

    def _record(self, action: str, username: str, address: str, **details: object) -> None:
        if self.audit is not None:  # the name as typed: a failed login's name may not exist
            self.audit.record(action, username[:200], address, username[:200], **details)

    def logout(self, token: str | None, address: str = "unknown") -> str:
        """Revoke the bearer token (by its id) so it is refused from now on; returns whose it was."""
        assert self.users is not None and self.signer is not None
        self.principal(token)  # a missing, invalid or already revoked token is a 401, not a silent success
        assert token is not None
        claims = self.signer.verify(token)
        self.users.revoke(claims.token_id, claims.username, claims.expires_ts)
        self._record("auth.logout", claims.username, address, token_id=claims.token_id)
        return claims.username

    def describe(self) -> str:
        """One line for the startup summary; warns when auth is on but nobody can log in yet."""
        if not self.enabled or self.users is None:
            return "off (every request acts as admin; set ANNOTATE_AUTH_ENABLED=true to require logins)"
        count = self.users.count()
        if count == 0:
            return "ON, but no users yet: add one with `annotate-server users add NAME --role admin`"
        admins = sum(1 for u in self.users.list() if u.role is Role.admin)
        return f"on ({count} users, {admins} admins)"
