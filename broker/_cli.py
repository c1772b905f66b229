"""The ``tiaki`` command line.

Each package contributes a Typer sub-application; this module only assembles them and turns
errors into one-line messages. A deliberate :class:`~broker._errors.TiakiError`, a bad
argument or an :class:`OSError` (a folder not writable, a port taken) never shows a traceback.
"""

from __future__ import annotations

import errno
import sys

import typer

from adapters._cli import app as adapter_app
from broker._errors import TiakiError
from broker._settings import not_utf8, not_utf8_text
from broker.aggregate._cli import app as hub_app
from broker.audit._cli import app as audit_app
from broker.codec._cli import app as schema_app
from broker.envelope._cli import app as keys_app
from broker.platform._cli import kafka_app, provision_command
from broker.policy._cli import app as policy_app
from broker.registry._cli import app as registry_app
from broker.runtime._cli import app as broker_app
from broker.runtime._cli import demo_command
from broker.runtime._quarantine import app as quarantine_app
from broker.runtime._review_cli import app as review_app

app = typer.Typer(
    name="tiaki",
    help="Tiaki: policy-enforcing information sharing for the multi-agency family-violence response.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(kafka_app, name="kafka")
app.command("provision")(provision_command)
app.add_typer(registry_app, name="registry")
app.add_typer(keys_app, name="keys")
app.add_typer(schema_app, name="schema")
app.add_typer(policy_app, name="policy")
app.add_typer(broker_app, name="broker")
app.add_typer(review_app, name="review")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(audit_app, name="audit")
app.add_typer(hub_app, name="hub")
app.command("demo")(demo_command)
app.add_typer(adapter_app, name="adapter")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    for position, arg in enumerate(args, 1):
        # Python keeps bytes that are not UTF-8 as lone surrogates, which fail later at the
        # first write (a key document, the audit index) with a traceback, and may lose the
        # act (a revocation's reason): refuse them before anything runs.
        if not_utf8_text(arg):
            print(f"tiaki: argument {position} is not UTF-8 text", file=sys.stderr)
            return 2
    variable = not_utf8()
    if variable is not None:
        print(f"tiaki: environment variable {variable} is not UTF-8 text", file=sys.stderr)
        return 2
    command = typer.main.get_command(app)
    try:
        # Without standalone mode, a command's ``raise typer.Exit(n)`` comes back as the value.
        result = command.main(args=list(args), prog_name="tiaki", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("tiaki: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:
        # Bad arguments and options: one line, with a pointer to the help.
        message = " ".join(exc.format_message().split())
        if message:  # empty when Typer has already printed the help (no arguments given)
            print(f"tiaki: {message} (see 'tiaki --help')", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except TiakiError as exc:
        print(f"tiaki: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # The system said no (a folder not writable, a port taken, a disk full): what it
        # said, and where, in one line. Commands that can say more catch it themselves.
        print(f"tiaki: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


def os_error_line(exc: OSError) -> str:
    """``<what>: <strerror> (<path>)`` for an :class:`OSError` no command caught."""
    if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        what = "cannot listen on the port (is another process using it?)"
    elif exc.filename is not None:
        what = "cannot use a file or folder"
    else:
        what = "the system refused"
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{what}: {reason}" + (f" ({' -> '.join(paths)})" if paths else "")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
