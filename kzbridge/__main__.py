"""``python -m kzbridge`` and the ``kzbridge`` console script.

A Ctrl-C (or SIGTERM) at any moment from here on ends as one line and exit 130, never a
traceback: the command line's modules are imported inside ``run`` (the first tens of
milliseconds), and click runs without its standalone handling, which would turn a Ctrl-C
while it parses the arguments into "Aborted!" and exit 1. What comes before ``run`` is
CPython's own start (README, "Guarantees"); this module imports nothing but ``sys``.
"""

from __future__ import annotations

import sys


def _deliver_again(unraisable: sys.UnraisableHookArgs) -> None:
    """A Ctrl-C (or SIGTERM) that CPython swallowed is delivered again, 10 ms later.

    Python raises KeyboardInterrupt wherever the main thread is; inside a weakref callback or a
    ``__del__`` (importlib runs one as each module's lock is freed, so during every import) the
    interpreter can only print it as "Exception ignored in" and go on, and the command would run
    to its end as if no Ctrl-C had come. Sent again from a timer thread, the signal lands in
    ordinary code (or, rarely, in another callback, and comes here again).
    """
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    import os
    import signal
    import threading

    again = signal.SIGTERM if type(unraisable.exc_value).__name__ == "Terminated" else signal.SIGINT
    threading.Timer(0.01, os.kill, (os.getpid(), again)).start()


def run() -> None:
    code: object = 0
    sys.unraisablehook = _deliver_again
    try:
        import click

        from .cli import main

        try:
            # Not standalone: click's errors come here, to be reported as click would, except
            # a Ctrl-C it caught while parsing (an Abort caused by KeyboardInterrupt).
            code = main.main(standalone_mode=False)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                raise exc.__cause__ from None
            click.echo("Aborted!", err=True)
            code = 1
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
    except KeyboardInterrupt as exc:  # before the command's own handler exists, or after it
        said = "terminated" if type(exc).__name__ == "Terminated" else "interrupted"
        sys.stderr.write(f"kzbridge: {said}\n")
        code = 130
    finally:
        # Leaving: a Ctrl-C now must not turn the exit into a traceback. (signal is loaded by now,
        # unless the Ctrl-C came first; importing it here could be interrupted itself.)
        signals = sys.modules.get("signal")
        if signals is not None:
            signals.signal(signals.SIGINT, signals.SIG_IGN)
    # Commands return None; an int is click's exit code (--help, --version, ctx.exit).
    sys.exit(code if type(code) is int else 0)


if __name__ == "__main__":
    run()
