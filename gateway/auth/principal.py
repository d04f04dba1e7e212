"""The authenticated caller every request runs as."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.auth.rbac import ROLE_PERMISSIONS, Permission, Role


class CredentialKind(StrEnum):
    API_KEY = "api_key"
    JWT = "jwt"


@dataclass(frozen=True)
class Principal:
    """One tenant, one role: taken from the credential, never from the request body.

    ``key_id`` identifies the rate-limit bucket: the API key's id, or ``jwt:<sub>``.
    """

    tenant_id: str
    role: Role
    subject: str
    kind: CredentialKind
    key_id: str
    tier: str
    scopes: frozenset[Permission] | None = None

    @property
    def permissions(self) -> frozenset[Permission]:
        granted = ROLE_PERMISSIONS[self.role]
        return granted if self.scopes is None else granted & self.scopes

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions
