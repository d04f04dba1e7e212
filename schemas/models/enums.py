"""Python mirrors of the Avro enums; values are the Avro symbols, in the same order.

Every enum starts with `unknown`, the Avro enum `default`: a reader that meets a
symbol added after it was built decodes it as `unknown` instead of failing.
"""

from enum import StrEnum


class RiskLevel(StrEnum):
    UNKNOWN = "unknown"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class HpkeSuite(StrEnum):
    UNKNOWN = "unknown"
    X25519_SHA256_CHACHA20POLY1305 = "x25519_sha256_chacha20poly1305"
    MLKEM768X25519_SHA256_CHACHA20POLY1305 = "mlkem768x25519_sha256_chacha20poly1305"


class FailureReason(StrEnum):
    UNKNOWN = "unknown"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    APPROVAL_DENIED = "approval_denied"
    APPROVAL_EXPIRED = "approval_expired"
    BUDGET_EXCEEDED = "budget_exceeded"


class RunRejectionReason(StrEnum):
    UNKNOWN = "unknown"
    BUDGET_EXCEEDED = "budget_exceeded"
    UNKNOWN_AGENT = "unknown_agent"
    INVALID_REQUEST = "invalid_request"


class AgentStatus(StrEnum):
    UNKNOWN = "unknown"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"


class Verdict(StrEnum):
    UNKNOWN = "unknown"
    APPROVE = "approve"
    DENY = "deny"


class DecisionRejectionReason(StrEnum):
    UNKNOWN = "unknown"
    ALREADY_DECIDED = "already_decided"
    EXPIRED = "expired"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"


class BudgetPeriod(StrEnum):
    UNKNOWN = "unknown"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"


class BudgetStatus(StrEnum):
    UNKNOWN = "unknown"
    OK = "ok"
    WARNING = "warning"
    EXCEEDED = "exceeded"


class PiiType(StrEnum):
    UNKNOWN = "unknown"
    EMAIL = "email"
    PHONE = "phone"
    CREDIT_CARD = "credit_card"
    NATIONAL_ID = "national_id"
    IP_ADDRESS = "ip_address"
    PERSON_NAME = "person_name"
    POSTAL_ADDRESS = "postal_address"


class RedactionMethod(StrEnum):
    UNKNOWN = "unknown"
    MASK = "mask"
    HASH = "hash"
    REMOVE = "remove"
    TOKENIZE = "tokenize"
