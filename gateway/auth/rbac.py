"""Roles and what they may do (seed RBAC, SPEC "Public surface").

Every endpoint names one permission; a role grants a fixed set. API keys may be
narrowed further by scopes, never widened.
"""

from __future__ import annotations

from enum import StrEnum


class Permission(StrEnum):
    AGENTS_EXECUTE = "agents:execute"
    WORKFLOWS_CREATE = "workflows:create"
    APPROVALS_APPROVE = "approvals:approve"
    BUDGETS_MANAGE = "budgets:manage"
    WEBHOOKS_MANAGE = "webhooks:manage"
    AUDIT_READ = "audit:read"
    EVENTS_PUBLISH = "events:publish"
    #: Reading the tenant's state and streams (budgets, approvals, agents, events).
    EVENTS_READ = "events:read"
    USERS_MANAGE = "users:manage"


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    DEVELOPER = "developer"
    VIEWER = "viewer"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.MANAGER: frozenset(
        {
            Permission.APPROVALS_APPROVE,
            Permission.BUDGETS_MANAGE,
            Permission.WORKFLOWS_CREATE,
            Permission.WEBHOOKS_MANAGE,
            Permission.AUDIT_READ,
            Permission.EVENTS_READ,
        }
    ),
    Role.DEVELOPER: frozenset(
        {
            Permission.AGENTS_EXECUTE,
            Permission.WORKFLOWS_CREATE,
            Permission.EVENTS_PUBLISH,
            Permission.WEBHOOKS_MANAGE,
            Permission.EVENTS_READ,
        }
    ),
    Role.VIEWER: frozenset({Permission.AUDIT_READ, Permission.EVENTS_READ}),
}
