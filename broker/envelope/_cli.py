"""``tiaki keys``: development keys and the key registry.

The commands read the folder ``Settings.keys_dir`` (``$TIAKI_HOME/keys``) and the agency
registry; the layout is described in :mod:`broker.envelope._store`.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from broker._settings import Settings
from broker.envelope._errors import KeyStoreError
from broker.envelope._keys import BROKER
from broker.envelope._store import LOCK_WAIT_S, KeyStore, init_dev_keys, purposes_of
from broker.registry import load_registry

app = typer.Typer(help="Keys: create development keys, rotate, revoke.", no_args_is_help=True)


def _principals(settings: Settings) -> dict[str, str]:
    registry = load_registry(settings.registry)
    principals = {agency.id: agency.key_ref for agency in registry.agencies}
    principals[BROKER] = BROKER
    return principals


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


#: ``--wait``: how long a command waits for another ``tiaki keys`` command to finish.
Wait = Annotated[
    float,
    typer.Option(
        "--wait",
        min=0,
        max=86_400,
        help="Seconds to wait for another `tiaki keys` command changing the keys; then fail.",
    ),
]

#: The longest validity a key may be given (ten years): keys are rotated well before, and a
#: validity past the year 9999 cannot even be written down.
MAX_DAYS = 3653


@app.command("init")
def init(
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing key sets (old keys are deleted).")
    ] = False,
    days: Annotated[
        int, typer.Option("--days", min=1, max=MAX_DAYS, help="Validity of each key.")
    ] = 365,
    wait: Wait = LOCK_WAIT_S,
) -> None:
    """Generate development keys for every agency in the registry and for the broker."""
    settings = Settings.from_env()
    store = KeyStore(settings.keys_dir)
    refs = set(_principals(settings).values())
    with store.locked(wait):
        outcome = init_dev_keys(
            store, refs, now=_now(), random=os.urandom, force=force, validity=timedelta(days=days)
        )
    counts = {
        word: sum(1 for v in outcome.values() if v == word)
        for word in ("created", "kept", "replaced")
    }
    print(
        f"keys in {store.root}: {counts['created']} key sets created, "
        f"{counts['replaced']} replaced, {counts['kept']} kept"
    )


@app.command("list")
def list_keys(
    name: Annotated[str | None, typer.Argument(help="Only this agency or key set.")] = None,
) -> None:
    """Show every key: key set, id, purpose, algorithm, state now, validity."""
    settings = Settings.from_env()
    store = KeyStore(settings.keys_dir)
    if not store.key_refs():
        raise KeyStoreError(f"no keys in {store.root} (run 'tiaki keys init')")
    ring = store.load()
    now = _now()
    owner = _principals(settings).get(name, name) if name else None
    found = ring.keys(owner)
    if name and not found:  # a misspelt name would otherwise list nothing, successfully
        raise KeyStoreError(f"no key set {name!r} in {store.root}")
    table = Table("key set", "key id", "purpose", "algorithm", "state", "created", "not after")
    for info in found:
        table.add_row(
            info.owner,
            info.key_id,
            info.purpose.value,
            info.algorithm.value,
            info.state_at(now).value,
            f"{info.created_at:%Y-%m-%d %H:%M}",
            f"{info.not_after:%Y-%m-%d %H:%M}",
        )
    Console(width=200).print(table)


@app.command("rotate")
def rotate(
    name: Annotated[str, typer.Argument(help="Agency id, key set name, or 'broker'.")],
    purpose: Annotated[
        list[str] | None,
        typer.Option("--purpose", help="encryption or signing (repeatable; default both)."),
    ] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, max=MAX_DAYS, help="Validity of the new keys.")
    ] = 365,
    wait: Wait = LOCK_WAIT_S,
) -> None:
    """Create new current keys for NAME; the old ones become retiring."""
    settings = Settings.from_env()
    store = KeyStore(settings.keys_dir)
    owner = _principals(settings).get(name, name)
    if owner not in store.key_refs():
        raise KeyStoreError(f"no key set {owner!r} in {store.root}")
    purposes = purposes_of(purpose) if purpose else purposes_of(["encryption", "signing"])
    with store.locked(wait):  # read, change and write as one, against a revoke at the same time
        ring = store.load(private_for=[owner])
        new = ring.rotate(owner, _now(), os.urandom, timedelta(days=days), purposes)
        store.save(ring, [owner])
    for info in new:
        print(f"{info.key_id} ({info.purpose.value}, {info.algorithm.value}) is now active")


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key to revoke.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why (recorded in the public document).")
    ] = "unspecified",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Revoke a broker key all the same: what is held or undelivered under it"
            " becomes unreadable.",
        ),
    ] = False,
    wait: Wait = LOCK_WAIT_S,
) -> None:
    """Revoke KEY_ID: it will be refused for sealing, opening, signing and verifying.

    Each key set is read on its own: another agency's broken document never stands in the way
    of a revocation (in an incident, it must always be possible).

    A broker key is revoked only with --force. It sealed or signed every item on the review
    queue and in the quarantine (kept 30 days) and every delivery not yet read (14 days), and
    a revoked key opens none of them again; a rotation leaves the old key to expire instead
    (docs/operations.md)."""
    settings = Settings.from_env()
    store = KeyStore(settings.keys_dir)
    with store.locked(wait):  # read, change and write as one, against a rotation at the same time
        ring, refused = store.load_each()
        owner = key_id.partition(".")[0]
        if owner in refused:
            raise KeyStoreError(
                f"cannot revoke {key_id}: {owner}'s key document is refused "
                f"({refused[owner]}); fix or restore it, then revoke"
            )
        if ring.get(key_id).owner == BROKER and not force:
            raise KeyStoreError(
                f"not revoking {key_id}: it is a broker key, and the review items, quarantine"
                " records and unread deliveries sealed under it would become unreadable for"
                " good; after a rotation let it expire instead, or if it is compromised see"
                " docs/operations.md and run again with --force"
            )
        info = ring.revoke(key_id, _now(), reason)
        store.save(ring, [info.owner])
    print(f"{info.key_id} revoked")
    for ref, error in sorted(refused.items()):
        print(f"tiaki: note: {ref}'s key document is refused: {error}", file=sys.stderr)
