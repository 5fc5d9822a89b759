"""Python API of skrr-onnx: each function runs the ``skrr-onnx`` binary installed with this
package, with ``--json``, and returns the JSON document it printed as a dict.

Running the binary, rather than binding the library, keeps one implementation and costs only the
process start: a call is as fast as the command line. Its log lines (and, on a terminal, its
progress bars) go to this process's ``sys.stderr`` while it runs.

Options are the command line's flags as keywords, ``-`` written ``_``: ``min_cos=0.7`` is
``--min-cos 0.7``, ``no_reuse=True`` is ``--no-reuse``, ``null_ids=[0, 1]`` is
``--null-ids 0,1``, ``verbose=2`` is ``-vv``, ``external_data=True`` / ``external_data="w.bin"``
is ``--external-data`` / ``--external-data=w.bin``. ``None`` or ``False`` leaves a flag out. A
keyword a command does not take raises ``TypeError`` before anything runs; a value of the wrong
type raises ``TypeError`` and a value outside a fixed choice raises ``ValueError``.

A run that fails raises :class:`SkrrError` with the exit code and the one-line message.

Example::

    import skrr_onnx
    report = skrr_onnx.prune("t5/model.onnx", "t5/pruned.onnx", 0.25, min_cos=0.7)
    print(report["verdict"], report["fidelity"]["cos_mean"])
"""

from __future__ import annotations

import codecs
import collections.abc
import difflib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict, Union, Unpack

__all__ = [
    "SkrrError",
    "apply",
    "binary",
    "compare",
    "convert",
    "doctor",
    "inspect",
    "plan",
    "prune",
    "score",
]

PathLike = str | os.PathLike[str]
"""A file path: ``str`` or ``pathlib.Path``."""

_COUNT = "count"
"""Marks an ``int`` option given as a repeated short flag (``verbose=2`` is ``-vv``)."""

_JOINED = "joined"
"""Marks a sequence the binary reads as one comma-separated value (``--null-ids 0,1``) rather
than as a list of values, so that tests/wheel.rs compares it with the right clap form."""


class SkrrError(Exception):
    """A run of ``skrr-onnx`` that failed.

    Attributes:
        code: the exit code (src/error.rs: 1 a fidelity check FAILED, 2 usage, 3 bad model,
            4 bad calibration / plan input, 5 ONNX Runtime missing or failing, 6 output not
            written, 70 internal; 128 + N when killed by signal N).
        message: the binary's one-line ``error: ...`` message, without ``error: ``.
        report: the JSON document the run printed before failing, if any: the full report of a
            main job or a ``compare`` whose fidelity check FAILED, ``doctor``'s findings.
    """

    def __init__(self, code: int, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message} (exit code {code})")
        self.code = code
        self.message = message
        self.report = report


# Options, grouped as the command line groups its flags (src/cli.rs, the commands' Args).


class GlobalOptions(TypedDict, total=False):
    """Flags every command takes."""

    verbose: Annotated[int, _COUNT]
    provider: Literal["cpu", "cuda", "tensorrt"]
    threads: int


class CalibOptions(TypedDict, total=False):
    """Calibration prompts and how they are run (``skrr-onnx plan --help``)."""

    prompts: PathLike
    calib: PathLike
    tokenizer: PathLike
    max_length: int
    num_prompts: int
    null_ids: Annotated[collections.abc.Sequence[int], _JOINED]
    no_null: bool
    pad_id: int
    include_padding: bool
    projection: PathLike
    chunk: int
    cache_mem: str | int
    measure: str
    prepack: Literal["auto", "on", "off"]


class SearchOptions(TypedDict, total=False):
    """The search of a plan."""

    beam: int
    method: Literal["skrr", "finercut", "shortgpt"]
    no_reuse: bool
    time_limit: float
    compensate: Literal["none", "linear", "merged"]
    rank: Literal["plain", "compensated"]


class ToleranceOptions(TypedDict, total=False):
    """Limits of the fidelity check."""

    min_cos: float
    max_null_ratio: float
    max_d: float
    atol: float
    rtol: float


class WriteOptions(TypedDict, total=False):
    """Where a written model's tensor data goes."""

    external_data: bool | str
    inline: bool


class PruneOptions(
    GlobalOptions, SearchOptions, CalibOptions, ToleranceOptions, WriteOptions, total=False
):
    """Options of the main job (``skrr-onnx --help``)."""

    plan_out: PathLike
    reuse_weights: Literal["share", "copy"]
    report: PathLike
    no_compare: bool
    heldout: PathLike
    encoder: collections.abc.Sequence[str]
    """With a diffusers pipeline folder as input: the text encoders to prune (default: the
    largest)."""


class PlanOptions(GlobalOptions, SearchOptions, CalibOptions, total=False):
    """Options of ``skrr-onnx plan``."""

    sweep: collections.abc.Sequence[float]


class ApplyOptions(GlobalOptions, WriteOptions, total=False):
    """Options of ``skrr-onnx apply``."""

    reuse_weights: Literal["share", "copy"]


class ScoreOptions(GlobalOptions, CalibOptions, total=False):
    """Options of ``skrr-onnx score``."""

    compensate: Literal["none", "linear", "merged"]
    heldout: PathLike


class CompareOptions(GlobalOptions, CalibOptions, ToleranceOptions, total=False):
    """Options of ``skrr-onnx compare``."""


class ConvertOptions(GlobalOptions, WriteOptions, total=False):
    """Options of ``skrr-onnx convert``."""


def prune(
    input: PathLike, output: PathLike, sparsity: float, **options: Unpack[PruneOptions]
) -> dict[str, Any]:
    """The main job: calibrate ``input`` on prompts, search a plan removing at least
    ``sparsity`` of its parameters, write the pruned model to ``output`` and compare it with
    ``input`` on held-out prompts (``skrr-onnx INPUT OUTPUT --sparsity S``).

    Returns the run's report (what ``report=FILE`` writes): ``plan``, ``rewrite``, ``written``,
    ``fidelity``, ``phases``, ``verdict``, ... Raises :class:`SkrrError`; a fidelity check
    outside the tolerances raises it with code 1, the output written and the report in
    ``.report``.
    """
    return _run("prune", [input, output], {"sparsity": sparsity}, options)


def plan(
    model: PathLike,
    output: PathLike,
    sparsity: float | None = None,
    **options: Unpack[PlanOptions],
) -> dict[str, Any]:
    """The search alone: write the plan file for ``sparsity`` (or a plan per level of
    ``sweep=[...]``) to ``output`` (``skrr-onnx plan MODEL -o OUTPUT``).

    Returns the search's summary: the plan files written, their levels, D, timings.
    """
    return _run("plan", [model], {"output": output, "sparsity": sparsity}, options)


def apply(
    input: PathLike, plan: PathLike, output: PathLike, **options: Unpack[ApplyOptions]
) -> dict[str, Any]:
    """The rewrite alone: write ``input`` pruned by the plan file ``plan`` to ``output``
    (``skrr-onnx apply INPUT PLAN OUTPUT``). Returns what was removed and written."""
    return _run("apply", [input, plan, output], {}, options)


def score(model: PathLike, plan: PathLike, **options: Unpack[ScoreOptions]) -> dict[str, Any]:
    """The discrepancy D = D_c + D_null of the plan file ``plan`` on calibration prompts
    (``skrr-onnx score MODEL --plan PLAN``)."""
    return _run("score", [model], {"plan": plan}, options)


def compare(dense: PathLike, pruned: PathLike, **options: Unpack[CompareOptions]) -> dict[str, Any]:
    """The fidelity of ``pruned`` against its dense original on held-out prompts: D, MSE,
    cosine, null-norm ratio, sizes and ``passed`` (``skrr-onnx compare DENSE PRUNED``).

    A check outside the tolerances raises :class:`SkrrError` with code 1 and the document in
    ``.report``.
    """
    return _run("compare", [dense, pruned], {}, options)


def inspect(model: PathLike, **options: Unpack[GlobalOptions]) -> dict[str, Any]:
    """The encoder's layers and attention / feed-forward sub-blocks as block detection finds
    them, with parameters per sub-block (``skrr-onnx inspect MODEL``)."""
    return _run("inspect", [model], {}, options)


def convert(input: PathLike, output: PathLike, **options: Unpack[ConvertOptions]) -> dict[str, Any]:
    """Re-save ``input`` as ``output``, moving weights into external data (``external_data``)
    or inline (``inline=True``) (``skrr-onnx convert INPUT OUTPUT``)."""
    return _run("convert", [input, output], {}, options)


def doctor(**options: Unpack[GlobalOptions]) -> dict[str, Any]:
    """Where ONNX Runtime was found (``library``, ``source``), its ``version`` and execution
    providers, and whether ``provider`` is usable (``skrr-onnx doctor``).

    Raises :class:`SkrrError` (code 5) when ONNX Runtime is missing or the provider unusable,
    with the findings in ``.report``.
    """
    return _run("doctor", [], {}, options)


def binary() -> str:
    """The ``skrr-onnx`` executable the functions run: ``$SKRR_ONNX_BIN`` if set, else the one
    installed with this package (wherever pip put it: a venv, ``--user``, ``--target``), else
    the first on ``PATH``."""
    explicit = os.environ.get("SKRR_ONNX_BIN")
    if explicit:
        return explicit
    installed = _installed_binary()
    if installed is not None:
        return installed
    on_path = shutil.which("skrr-onnx")
    if on_path is not None:
        return on_path
    raise FileNotFoundError(
        "the skrr-onnx executable was not found beside this package nor on PATH; "
        "reinstall it (pip install skrr-onnx) or set SKRR_ONNX_BIN=/path/to/skrr-onnx"
    )


def _installed_binary() -> str | None:
    """The executable listed in this very copy's install record, so that a package imported
    from one environment never runs another environment's binary."""
    site = Path(__file__).resolve().parent.parent
    for info in sorted(site.glob("skrr_onnx-*.dist-info")):
        dist = importlib.metadata.PathDistribution(info)
        for file in dist.files or ():
            if file.name == "skrr-onnx":
                path = Path(str(dist.locate_file(file))).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    return None


class _Command(typing.NamedTuple):
    """What a function runs: the subcommand (``None``: the main job), its options, and which of
    the function's own parameters are flags rather than positional arguments."""

    name: str | None
    options: type
    flags: tuple[str, ...] = ()


_COMMANDS: dict[str, _Command] = {
    "prune": _Command(None, PruneOptions, ("sparsity",)),
    "plan": _Command("plan", PlanOptions, ("output", "sparsity")),
    "apply": _Command("apply", ApplyOptions),
    "score": _Command("score", ScoreOptions, ("plan",)),
    "compare": _Command("compare", CompareOptions),
    "inspect": _Command("inspect", GlobalOptions),
    "convert": _Command("convert", ConvertOptions),
    "doctor": _Command("doctor", GlobalOptions),
}


def _interface() -> dict[str, dict[str, Any]]:
    """Each function's command line as this module writes it: the subcommand, the parameters
    given as positional arguments and as flags, and the form the binary reads each option in
    (``flag``: bare when True; ``count``: ``-v`` repeated; ``optional``: bare or
    ``--name=VALUE``; ``list``: values separated by commas; ``value``: one value, which a
    sequence is joined into with commas). tests/wheel.rs compares it with the binary's own
    argument definitions, so that a flag added, renamed or retyped there fails a test until it
    is here."""
    import inspect as introspect

    interface = {}
    for function, command in _COMMANDS.items():
        parameters = introspect.signature(globals()[function]).parameters.values()
        hints = typing.get_type_hints(command.options, include_extras=True)
        interface[function] = {
            "command": command.name,
            "positionals": [
                p.name
                for p in parameters
                if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in command.flags
            ],
            "flags": list(command.flags),
            "options": {name: _form(tp) for name, tp in hints.items()},
        }
    return interface


def _form(tp: Any) -> str:
    """How the binary reads an option declared ``tp`` (see :func:`_interface`)."""
    if tp is bool:
        return "flag"
    if typing.get_origin(tp) is Annotated and _COUNT in tp.__metadata__:
        return "count"
    if typing.get_origin(tp) is Annotated and _JOINED in tp.__metadata__:
        return "value"
    if bool in (_union_args(tp) or ()):
        return "optional"
    if typing.get_origin(tp) is collections.abc.Sequence:
        return "list"
    return "value"


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _accepts(tp: Any, value: Any) -> bool:
    """Whether ``value`` is of the declared type ``tp`` (bools are not numbers here: ``beam=True``
    is a mistake, not 1)."""
    if typing.get_origin(tp) is Annotated:
        return _accepts(typing.get_args(tp)[0], value)
    union = _union_args(tp)
    if union is not None:
        return any(_accepts(t, value) for t in union)
    if tp is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if tp is float:
        return isinstance(value, (int, float))
    if typing.get_origin(tp) is Literal:
        return isinstance(value, str)
    if typing.get_origin(tp) is collections.abc.Sequence:
        item = typing.get_args(tp)[0]
        return isinstance(value, (list, tuple)) and all(_accepts(item, v) for v in value)
    return isinstance(value, typing.get_origin(tp) or tp)


def _text(value: Any) -> str:
    """A value as the command line reads it; floats in Python's shortest round-trip form."""
    if isinstance(value, float):
        return repr(value)
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _arguments(function: str, options: Mapping[str, Any]) -> list[str]:
    """The flags for ``options`` of ``function``; every value is checked against its declared
    type before anything runs, and given as ``--name=VALUE`` so that a value starting with ``-``
    stays a value."""
    hints = typing.get_type_hints(_COMMANDS[function].options, include_extras=True)
    args: list[str] = []
    for name, value in options.items():
        if name not in hints:
            close = difflib.get_close_matches(name, list(hints), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}{hint}")
        if value is None:
            continue
        tp = hints[name]
        if not _accepts(tp, value):
            raise TypeError(f"{function}(): {name}={value!r} is not of type {_describe(tp)}")
        if typing.get_origin(tp) is Literal and value not in typing.get_args(tp):
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise ValueError(f"{function}(): {name}={value!r} is not one of {choices}")
        flag = "--" + name.replace("_", "-")
        form = _form(tp)
        if form == "flag":
            args += [flag] if value else []
        elif form == "count":
            if value < 0:
                raise ValueError(f"{function}(): {name}={value!r} is negative")
            args += ["-" + "v" * value] if value else []
        elif form == "optional":
            if value is True:
                args.append(flag)
            elif value is not False:
                args.append(f"{flag}={_text(value)}")
        elif isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{function}(): {name}=[] needs at least one value")
            args.append(f"{flag}=" + ",".join(_text(v) for v in value))
        else:
            args.append(f"{flag}={_text(value)}")
    return args


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp).replace("typing.", "").replace("collections.abc.", "")


def _run(
    function: str,
    positionals: list[PathLike],
    flag_params: dict[str, Any],
    options: Mapping[str, object],
) -> dict[str, Any]:
    """Runs ``skrr-onnx [COMMAND] --json FLAGS -- POSITIONALS`` for ``function`` and returns
    its JSON document; ``--`` keeps a path that looks like a flag or a command name a path."""
    command = _COMMANDS[function]
    args = _arguments(function, options)
    for name, value in flag_params.items():
        if value is not None:
            args.append(f"--{name.replace('_', '-')}={_text(value)}")
    argv = [binary(), *([command.name] if command.name else []), "--json", *args, "--"]
    argv += [os.fspath(p) for p in positionals]
    code, stdout, error = _execute(argv)
    try:
        document = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        document = None
    if code == 0 and isinstance(document, dict):
        return document
    if code == 0:
        raise SkrrError(70, f"skrr-onnx printed no JSON document: {stdout[:200]!r}")
    if code < 0:  # killed by a signal: report it as a shell does
        error = error or f"killed by signal {signal.Signals(-code).name}"
        code = 128 - code
    message = error or f"skrr-onnx exited with code {code} and no error message"
    raise SkrrError(code, message, document if isinstance(document, dict) else None)


def _execute(argv: list[str]) -> tuple[int, str, str | None]:
    """Runs ``argv``, forwarding its stderr to ``sys.stderr`` as it comes (through a
    pseudo-terminal when ``sys.stderr`` is one, so that progress bars show), and returns the
    exit status, stdout and the last ``error: ...`` line without its prefix."""
    if _is_terminal(sys.stderr):
        import pty

        reader, writer = pty.openpty()
        _copy_window_size(sys.stderr.fileno(), writer)
    else:
        reader, writer = os.pipe()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=writer
        )
    except BaseException:
        os.close(reader)
        raise
    finally:
        os.close(writer)
    stdout = proc.stdout
    assert stdout is not None
    out: list[bytes] = []
    drain = threading.Thread(target=lambda: out.append(stdout.read()), daemon=True)
    drain.start()
    try:
        error = _forward(reader)
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached the child too; a notebook's interrupt did not. The binary
        # deletes a half-written output before it ends either way.
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    finally:
        os.close(reader)
    drain.join()
    stdout.close()
    proc.wait()
    return proc.returncode, b"".join(out).decode("utf-8", "replace"), error


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty()) and stream.fileno() >= 0
    except (AttributeError, OSError, ValueError):
        return False


def _copy_window_size(source: int, target: int) -> None:
    """Gives the pseudo-terminal the real one's size, which progress bars are laid out in."""
    import fcntl
    import termios

    try:
        fcntl.ioctl(target, termios.TIOCSWINSZ, fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        pass


def _forward(fd: int) -> str | None:
    """Copies ``fd`` to ``sys.stderr`` until the writer closes it; returns the last line that
    starts with ``error: ``, without that prefix."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    line = ""
    error = None
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # a pseudo-terminal's reader gets EIO once the child has exited
            chunk = b""
        text = decoder.decode(chunk, final=not chunk)
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()
        *complete, line = (line + text).split("\n")
        if not chunk:
            complete.append(line)
        for done in complete:
            done = done.rstrip("\r")
            if done.startswith("error: "):
                error = done[len("error: ") :]
        if not chunk:
            return error
