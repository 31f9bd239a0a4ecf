"""Dashboard members and their sign-in sessions.

A member belongs to one account and signs in with an e-mail address and a password, hashed with
argon2id (`argon2-cffi`; parameters upgraded on the next sign-in when the library's defaults
change). A signed-in browser holds a random session token in a cookie; the table keeps only its
SHA-256 plus a per-session CSRF token, so sessions can be listed, expired and ended server-side.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from retouch.serving.core.errors import InvalidInput, NotFound, Unauthorized

from .accounts import get_account
from .db import utcnow
from .keys import hash_matches
from .tables import AccountMember, MemberSession

SESSION_LIFETIME = timedelta(days=14)
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Verifying against this keeps a sign-in for an unknown e-mail as slow as one for a known one.
_DUMMY_PASSWORD = "not-a-member-password"


def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's current recommended parameters


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def _check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput("password", f"must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput("password", f"must be at most {MAX_PASSWORD_LENGTH} characters")
    return password


def normalise_email(email: str) -> str:
    email = (email or "").strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidInput("email", "is not a valid e-mail address")
    return email


def create_member(session: Session, account_id: str, email: str, password: str) -> AccountMember:
    """Add a member to an account; the e-mail must not belong to another member."""
    get_account(session, account_id)
    email = normalise_email(email)
    if session.scalars(select(AccountMember).where(AccountMember.email == email)).first():
        raise InvalidInput("email", f"{email} is already a member")
    member = AccountMember(account_id=account_id, email=email,
                           password_hash=hash_password(_check_password(password)),
                           status="active")
    session.add(member)
    session.flush()
    return member


def get_member_by_email(session: Session, email: str) -> AccountMember:
    member = session.scalars(select(AccountMember)
                             .where(AccountMember.email == normalise_email(email))).first()
    if member is None:
        raise NotFound("email", f"no member {email!r}")
    return member


def set_password(session: Session, email: str, password: str) -> AccountMember:
    """Reset a member's password and end all their sessions."""
    member = get_member_by_email(session, email)
    member.password_hash = hash_password(_check_password(password))
    end_member_sessions(session, member.id)
    session.flush()
    return member


def verify_credentials(session: Session, email: str, password: str) -> AccountMember:
    """The active member with this e-mail and password, or `Unauthorized` (one message for
    every failure, so the form does not reveal which e-mails exist)."""
    failure = Unauthorized("The e-mail or password is incorrect.")
    try:
        email = normalise_email(email)
    except InvalidInput:
        raise failure from None
    member = session.scalars(select(AccountMember).where(AccountMember.email == email)).first()
    hasher = _hasher()
    try:
        hasher.verify(member.password_hash if member else hash_password(_DUMMY_PASSWORD),
                      password or "")
    except (VerificationError, InvalidHashError):
        raise failure from None
    if member is None or member.status != "active":
        raise failure
    if hasher.check_needs_rehash(member.password_hash):
        member.password_hash = hasher.hash(password)
    member.last_login_at = utcnow()
    return member


# ---- sessions ---------------------------------------------------------------------------------
def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SignedInMember:
    """Who a request belongs to: the member, their account and the session's CSRF token."""

    member_id: str
    account_id: str
    email: str
    session_id: str
    csrf_token: str


def start_session(session: Session, member: AccountMember) -> tuple[SignedInMember, str]:
    """Open a session; returns it and the cookie token (not stored, only its hash)."""
    session.execute(delete(MemberSession).where(MemberSession.member_id == member.id,
                                                MemberSession.expires_at < utcnow()))
    token = secrets.token_urlsafe(32)
    row = MemberSession(id=_token_hash(token), member_id=member.id,
                        csrf_token=secrets.token_urlsafe(32), expires_at=utcnow() + SESSION_LIFETIME)
    session.add(row)
    session.flush()
    return SignedInMember(member.id, member.account_id, member.email, row.id, row.csrf_token), token


def signed_in_member(session: Session, token: str | None) -> SignedInMember | None:
    """The member behind a session cookie, or None (no, unknown, ended or expired session)."""
    if not token or len(token) > 200:
        return None
    token_hash = _token_hash(token)
    found = session.execute(
        select(MemberSession, AccountMember)
        .join(AccountMember, AccountMember.id == MemberSession.member_id)
        .where(MemberSession.id == token_hash)).first()
    if found is None:
        return None
    row, member = found
    if not hash_matches(row.id, token_hash):
        return None
    if row.revoked_at is not None or row.expires_at <= utcnow() or member.status != "active":
        return None
    return SignedInMember(member.id, member.account_id, member.email, row.id, row.csrf_token)


def end_session(session: Session, token: str | None) -> None:
    if token:
        session.execute(update(MemberSession).where(MemberSession.id == _token_hash(token),
                                                    MemberSession.revoked_at.is_(None))
                        .values(revoked_at=utcnow()))


def end_member_sessions(session: Session, member_id: str) -> None:
    session.execute(update(MemberSession).where(MemberSession.member_id == member_id,
                                                MemberSession.revoked_at.is_(None))
                    .values(revoked_at=utcnow()))
