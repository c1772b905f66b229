"""The adapter's keys: a ring to seal with and a ring to open with, both following the key
folder as the broker follows its own.

::

    key folder --(every 5 s, and when a record does not open for a key)--> opening ring
               --(the same reads, less the agency's own signing keys)----> sealing ring

The folder is read again every :data:`KEYS_EVERY` (the broker's ``KEYS_SECONDS``), so a
revocation there is in force from the next record sealed or opened, whichever ring it
concerns, and the broker's new keys are taken in without a restart. The two rings differ in
one thing: the agency's own signing keys. The sealing ring keeps the ones the client started
with, in the states it started with, taking in only their revocation: a new signing key must
not be used before the broker has it, which only a person knows (docs/adapters.md, "Rotate
keys"), and the old one, now ``retiring`` in the document, must still sign until the restart.

Revocation is final. A key revoked in either ring stays revoked whatever a later read says
(:meth:`KeyRing.update_from`), and every revocation the rings hold is appended to the folder's
``revoked.jsonl`` (:meth:`KeyStore.record_revoked`), which every later read applies, a
restart's included: a rolled-back copy of ``broker.json`` cannot bring a revoked key back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import structlog

from broker.envelope import BROKER, KeyInfo, KeyRing, KeyState, KeyStore, KeyStoreError, Purpose

log = structlog.get_logger("tiaki.adapter")

#: How often the key folder is read again (the broker reads its own as often).
KEYS_EVERY = dt.timedelta(seconds=5)

#: A log line: its message and its fields (key set, key id, error type: never content).
_Warning = tuple[str, tuple[tuple[str, str], ...]]


def _warning(message: str, **fields: str) -> _Warning:
    return message, tuple(sorted(fields.items()))


@dataclass(frozen=True)
class KeyFolder:
    """An agency's key folder (``tiaki keys init``): its own key set, with private keys, and
    the broker's public document. :class:`KeyRings` reads it again every few seconds and when
    a record does not open for a key, as the broker reads its own, so a rotation, a revocation
    or the broker's new document is taken in without a restart."""

    path: Path
    agency: str
    key_ref: str | None = None

    def load(self) -> KeyRing:
        """Every key set the agency needs; :class:`KeyStoreError` if one cannot be read."""
        ring, refused = self.load_each()
        if refused:
            raise next(iter(refused.values()))
        return ring

    def load_each(self, *, apply_revoked: bool = True) -> tuple[KeyRing, dict[str, KeyStoreError]]:
        """What can be read, and why each other key set could not (see
        :meth:`KeyStore.load_each`): one broken document keeps the rest usable."""
        ref = self.key_ref or self.agency
        return KeyStore(self.path).load_each(
            {self.agency: ref, BROKER: BROKER}, private_for=[ref], apply_revoked=apply_revoked
        )


class KeyRings:
    """One client's two key rings (see the module docs). Without a ``folder`` both are
    ``ring`` itself and nothing is read again (tests, a ring built in memory)."""

    def __init__(
        self,
        agency: str,
        ring: KeyRing,
        folder: KeyFolder | None,
        *,
        every: dt.timedelta = KEYS_EVERY,
    ) -> None:
        self.agency = agency
        self._folder = folder
        self._every = every
        self.opening = ring
        self.sealing = ring
        if folder is not None:
            # Each its own copy: what is read later goes into each as it may.
            self.opening = KeyRing()
            self.opening.update_from(ring)
            self.sealing = KeyRing()
            self.sealing.update_from(ring)
        #: When the folder was last read (by the client's clock), for :meth:`refresh_if_due`.
        self._read_at: dt.datetime | None = None
        #: Revoked keys already in ``revoked.jsonl`` (by this client or before it).
        self._recorded: set[str] = set()
        #: What the last read warned about, so a fault that lasts is logged once.
        self._warned: frozenset[_Warning] = frozenset()

    def refresh_if_due(self, now: dt.datetime) -> None:
        """:meth:`refresh` if :data:`KEYS_EVERY` has passed since the last read (or the clock
        went back): called before every record is sealed or opened."""
        if self._folder is None:
            return
        last = self._read_at
        if last is not None and last <= now < last + self._every:
            return
        self._read_at = now
        self.refresh()

    def refresh(self) -> bool:
        """Read the key folder again into both rings and record every revocation in force;
        whether the opening ring changed (so a record that did not open may open now).
        Nothing is raised: a folder, document or revocation list that cannot be read keeps
        the keys in force, and is logged (once while it lasts)."""
        if self._folder is None:
            return False
        warnings: list[_Warning] = []
        read = self._read(warnings)
        changed: list[KeyInfo] = []
        if read is not None:
            fresh, refused = read
            for ref, error in refused.items():
                warnings.append(
                    _warning(
                        "key document refused; its keys in force kept",
                        source=ref,
                        error_type=type(error).__name__,
                    )
                )
            changed, kept = self.opening.update_from(fresh)
            self.sealing.update_from(self._for_sealing(fresh))
            for info in changed:
                log.info(
                    "key updated",
                    agency=self.agency,
                    key_id=info.key_id,
                    key_state=info.state.value,
                )
            for info in kept:
                warnings.append(
                    _warning(
                        "key document would un-revoke a key or change it; kept as it was",
                        key_id=info.key_id,
                        key_state=info.state.value,
                    )
                )
        self._record_revoked(warnings)
        self._warn(warnings)
        return bool(changed)

    def _read(self, warnings: list[_Warning]) -> tuple[KeyRing, dict[str, KeyStoreError]] | None:
        assert self._folder is not None
        try:
            return self._folder.load_each()
        except (KeyStoreError, OSError) as exc:
            # Only the revocation list raises (or the folder itself). What it held is in force
            # in the rings already, never un-revoked by a read, so the documents' own
            # revocations still go in without it.
            warnings.append(_warning("revocation list unreadable", error_type=type(exc).__name__))
        try:
            return self._folder.load_each(apply_revoked=False)
        except (KeyStoreError, OSError) as exc:
            warnings.append(_warning("key folder unreadable", error_type=type(exc).__name__))
            return None

    def _for_sealing(self, fresh: KeyRing) -> KeyRing:
        """``fresh`` as the sealing ring may take it: the agency's own signing keys only if
        the client started with them, and then only revoked (their other changes, such as
        ``retiring`` after a rotation, wait for the restart that switches keys). Public
        halves only: the sealing ring keeps the private keys it started with, and no other."""
        ring = KeyRing()
        own = fresh.key_set_of(self.agency)
        for info in fresh.keys(None):
            pinned = info.owner == own and info.purpose is Purpose.SIGNING
            if pinned and (info.key_id not in self.sealing or info.state is not KeyState.REVOKED):
                continue
            ring.add(info)
        for principal, ref in fresh.principals.items():
            ring.bind(principal, ref)
        return ring

    def _record_revoked(self, warnings: list[_Warning]) -> None:
        """Append the revocations in force that ``revoked.jsonl`` may not list yet."""
        assert self._folder is not None
        revoked = [
            info
            for ring in (self.opening, self.sealing)
            for info in ring.keys(None)
            if info.state is KeyState.REVOKED and info.key_id not in self._recorded
        ]
        if not revoked:
            return
        try:
            KeyStore(self._folder.path).record_revoked(revoked)
        except KeyStoreError as exc:
            # Still in force while this process runs; a restart on a rolled-back document
            # would not know of it, so say so (the folder read-only to the adapter, a full disk).
            warnings.append(_warning("revocation not recorded", error_type=type(exc).__name__))
            return
        self._recorded.update(info.key_id for info in revoked)

    def _warn(self, warnings: list[_Warning]) -> None:
        """Log each warning the previous read did not give: the folder is read every few
        seconds, and a fault that lasts (a broken document) needs saying once."""
        current = frozenset(warnings)
        for message, fields in sorted(current - self._warned):
            log.warning(message, agency=self.agency, **dict(fields))
        self._warned = current
