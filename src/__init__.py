"""chargpt: a character-level GPT from "Let's build GPT", trained with PyTorch Lightning.

Importing the package checks the floors first, so an older Python or PyTorch gets one line naming the fix instead of
an ``AttributeError`` from deep inside a run. Run as a program (``python -m src.…``), Ctrl-C during the seconds of
imports and set-up ends it with one line and exit status 130 instead of a traceback; training then installs its own
handler (``src.training.last_checkpoint``), which saves first.
"""

import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator

__version__ = "0.1.0"

PYTHON_FLOOR = (3, 10)  # X | Y unions evaluated at run time (jsonargparse reads the signatures), zip(strict=)
# torch.optim.Muon with adjust_lr_fn (2.9; the default config trains with it), torch.nn.utils.get_total_norm (2.6)
TORCH_FLOOR = (2, 9)


def check_floors() -> None:
    """Exit with status 2 and one line on stderr when Python or PyTorch is older than chargpt needs."""
    if sys.version_info < PYTHON_FLOOR:
        refuse("Python", PYTHON_FLOOR, sys.version.split()[0], "use a newer Python")
    import torch

    found = str(torch.__version__)
    match = re.match(r"(\d+)\.(\d+)", found)
    if match and tuple(map(int, match.groups())) < TORCH_FLOOR:
        refuse("torch", TORCH_FLOOR, found, "pip install -U torch")


def refuse(what: str, floor: tuple[int, int], found: str, fix: str) -> None:
    print(f"chargpt needs {what} >= {floor[0]}.{floor[1]}, found {found}: {fix}", file=sys.stderr)
    sys.exit(2)


class Interrupted(BaseException):
    """Ctrl-C once an entry point runs, before training installs its own handler: it unwinds to ``entry_point``
    (so temporary files are removed), which says one line and exits 130. A BaseException, so that Lightning passes
    it on instead of handling it as a KeyboardInterrupt (its message, exit status 1)."""


def stop_on_ctrl_c(signum: int, frame: object) -> None:
    if _entered:
        raise Interrupted
    # still importing: an exception raised here can be swallowed by the library being imported (numpy did, and
    # went on half-initialised), so stop at once; nothing has been written yet
    say_stopped()
    os._exit(128 + signum)


@contextlib.contextmanager
def entry_point() -> Iterator[None]:
    """What each entry point's ``main`` runs in: from here on Ctrl-C unwinds as ``Interrupted``, and ends here with
    one line and exit status 130."""
    global _entered
    _entered = True
    threading.excepthook = thread_error
    try:
        yield
    except Interrupted:
        say_stopped()
        sys.exit(130)


def run_command(name: str, build_parser, action, argv: list[str] | None = None) -> None:
    """An argparse entry point's ``main``: parse, run ``action``, and turn bad input (``UserError``) into one line
    naming the command and exit status 2."""
    from src.errors import UserError

    with entry_point():
        args = build_parser().parse_args(argv)
        try:
            action(args)
        except UserError as err:
            print(f"chargpt {name}: error: {err}", file=sys.stderr)
            sys.exit(2)


def thread_error(args: threading.ExceptHookArgs) -> None:
    """A disk error in a background thread (TensorBoard's event writer on a full disk) as one line instead of a
    traceback; the same error, raised again in the main thread, is not said twice (``already_said``)."""
    if not isinstance(args.exc_value, OSError):
        threading.__excepthook__(args)
        return
    _said.append(args.exc_value)
    print(f"chargpt: error: {disk_error(args.exc_value)}", file=sys.stderr, flush=True)


def disk_error(err: OSError) -> str:
    where = f" {err.filename or written_file(err)}".rstrip()
    return (
        f"could not write{where}: {err.strerror or err}; last.ckpt keeps the last step it saved. Free disk space "
        f"(or make the folder writable), then resume with --ckpt_path last"
    )


def written_file(err: OSError) -> str:
    """The file a failed write was for, when the error does not say (a write into an open file, as TensorBoard's
    event writer does): the innermost frame of the traceback with a ``filename`` argument."""
    found, tb = "", err.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_locals.get("filename")
        found, tb = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else found, tb.tb_next
    return found


def already_said(err: BaseException) -> bool:
    return any(err is said for said in _said)


def say_stopped() -> None:
    if os.getpid() == MAIN_PID and os.environ.get("LOCAL_RANK", "0") == "0":  # one line, not one per process
        print("chargpt: stopped by Ctrl-C", file=sys.stderr, flush=True)


_entered = False
_said: list[BaseException] = []  # the errors thread_error has reported
MAIN_PID = os.getpid()
if sys.argv[:1] == ["-m"]:  # what sys.argv[0] is while `python -m src.x` imports the package, and never otherwise
    signal.signal(signal.SIGINT, stop_on_ctrl_c)
check_floors()
