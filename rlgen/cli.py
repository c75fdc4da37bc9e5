"""The ``rlgen`` command: ``train | eval | sample | predict | list`` and tools (``rlgen style``),
generated from config dataclasses.

Each trainer registers a ``TrainerSpec`` (see ``cli_spec.py``); the flags of
``rlgen train NAME`` come from the fields of its config dataclass, their help from the
docstring under each field (the convention CleanRL's scripts use with tyro).

Errors and exit statuses:

* 0: the command succeeded.
* 2: bad input a user can fix, printed as one line on stderr (``error: ...`` or
  ``rlgen CMD NAME: ...``): a bad flag (argparse), a value the config dataclass rejects in
  ``__post_init__``, an unknown registry name (``UnknownNameError``), any
  ``rlgen.errors.InputError`` (bad checkpoint, dataset, download, environment...), the
  backbones' ``BackboneInputError`` and ``WeightsError``, and a path the user gave that is
  missing or of the wrong kind (``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``,
  ``NotADirectoryError``).
* 1: any other ``OSError`` (disk full, ...) as one line naming the error; any other exception is
  a bug (in rlgen or a plugin) and keeps its full traceback on stderr, followed by one
  ``error: Type: message (...)`` line.
* 130: interrupted (Ctrl-C).

``rlgen --debug CMD ...`` (before the command) or ``RLGEN_DEBUG=1`` re-raises every exception,
input errors included, so Python prints the whole traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import sys
import textwrap
import traceback
import types
import typing
from typing import Any, Literal, get_args, get_origin

import rlgen
from rlgen.errors import InputError
from rlgen.openmp import set_openmp_defaults
from rlgen.registry import REGISTRIES, TRAINERS, UnknownNameError

EXIT_USAGE = 2  # bad input, one line on stderr
EXIT_FAILURE = 1  # a bug (traceback shown) or an environment failure such as a full disk
EXIT_INTERRUPTED = 130
DEBUG_ENV = "RLGEN_DEBUG"


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


# -- dataclass -> argparse ---------------------------------------------------------------------
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (``x: int = 1`` then ``\"\"\"help\"\"\"``)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string"}


def _converter(tp: Any, optional: bool, flag: str) -> Any:
    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {_TYPE_WORDS.get(tp, tp.__name__)}{' or None' if optional else ''}, "
                f"got {text!r}"
            ) from None

    convert.__name__ = tp.__name__ if hasattr(tp, "__name__") else "value"
    return convert


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    aliases = getattr(cls, "__cli_aliases__", {})
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag, *aliases.get(f.name, ())]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = _preset_help(cls, f.name, docs.get(f.name, "")).replace("%", "%%")
        tp, optional = _strip_optional(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "required": required}
        if required:
            kwargs["help"] = help_text
        else:
            kwargs["default"] = default
            kwargs["help"] = f"{help_text} (default: {default})".strip()
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(tp) is Literal:
            choices = list(get_args(tp))
            kwargs["choices"] = choices
            kwargs["type"] = type(choices[0])
            kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        elif get_origin(tp) is tuple:
            # `--checkpoint A B` and `--checkpoint A --checkpoint B` both give (A, B); the
            # dataclass default applies when the flag is absent (see parse_config).
            item = get_args(tp)[0] if get_args(tp) else str
            kwargs.update(nargs="+", action="extend", default=None,
                          type=_converter(item, False, flag))
        elif tp in (int, float, str):
            kwargs["type"] = _converter(tp, optional, flag)
            kwargs["metavar"] = tp.__name__.upper()
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: the CLI does not support type {tp!r}")
        parser.add_argument(*names, **kwargs)


def _preset_help(cls: type, name: str, text: str) -> str:
    """A field's help with what each preset sets it to (``--preset``: every preset's source
    and fields), so no preset hides a value."""
    from rlgen.presets import presets_of

    presets = presets_of(cls)
    if not presets:
        return text
    if name == "preset":
        return f"{text}. " + "; ".join(f"{k} = {p.describe()}" for k, p in presets.items())
    set_by = [f"{k} {p.values[name]}" for k, p in presets.items() if name in p.values]
    return f"{text} [presets: {', '.join(set_by)}]" if set_by else text


def _given_fields(cls: type, argv: list[str], prog: str) -> set[str]:
    """The fields whose flags appear in ``argv`` (parsed again with every default suppressed,
    so a flag given with its default value still counts as given)."""
    parser = _Parser(prog=prog)
    add_dataclass_arguments(parser, cls)
    for action in parser._actions:  # (set_defaults would store the marker as a value)
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _is_tuple_field(cls: type, name: str) -> bool:
    tp, _ = _strip_optional(typing.get_type_hints(cls)[name])
    return get_origin(tp) is tuple


def parse_config(cls: type, argv: list[str], prog: str) -> Any:
    doc = inspect.getdoc(cls) or ""
    parser = _Parser(prog=prog, description=doc.splitlines()[0] if doc else None)
    add_dataclass_arguments(parser, cls)
    namespace = parser.parse_args(argv)
    values = vars(namespace)
    for key, value in list(values.items()):
        if isinstance(value, list):
            values[key] = tuple(value)
        elif value is None and _is_tuple_field(cls, key):
            del values[key]  # not given: the dataclass default
    try:
        if values.get("preset") is not None:  # published settings under the flags given
            from rlgen.presets import with_preset

            given = _given_fields(cls, argv, prog)
            return with_preset(cls, values["preset"], **{k: values[k] for k in given})
        return cls(**values)
    except ValueError as exc:  # __post_init__ validation of a flag value: input, exit status 2
        raise UsageError(f"{prog}: {_first_line(exc)}") from exc


# -- commands -------------------------------------------------------------------------------
def _count_parameters(name: str) -> tuple[int, str]:
    import torch

    from rlgen.vision.backbones import create_backbone

    with torch.device("meta"):
        backbone = create_backbone(name, in_channels=_default_in_channels(name))
    params = sum(p.numel() for p in backbone.parameters())
    stages = " ".join(f"{fi.stage}:{fi.channels}/{fi.reduction}" for fi in backbone.feature_info)
    return params, stages


def _default_in_channels(name: str) -> int:
    from rlgen.registry import BACKBONES

    signature = inspect.signature(BACKBONES.get(name))
    param = signature.parameters.get("in_channels")
    if param is not None and param.default is not inspect.Parameter.empty:
        return int(param.default)
    return 3


def cmd_list(kind: str | None) -> None:
    kinds = [kind] if kind else list(REGISTRIES)
    for k in kinds:
        if k not in REGISTRIES:
            raise UsageError(f"rlgen list: unknown kind {k!r}; choose from {', '.join(REGISTRIES)}")
        registry = REGISTRIES[k]
        entries = registry.list()
        print(f"{k} ({len(entries)}):")
        for name, description in entries:
            if k == "backbones":
                params, stages = _count_parameters(name)
                print(f"  {name:<24} {params:>13,} params  {stages}")
                if description:
                    print(f"  {'':<24} {description}")
            else:
                print(f"  {name:<24} {description}")


def _run_spec(command: str, name: str, argv: list[str]) -> Any:
    spec = TRAINERS.create(name)
    prog = f"rlgen {command} {name}"
    if command == "train":
        config_cls, fn = spec.config, spec.train
    else:
        pair = {"eval": spec.evaluate, "sample": spec.sample, "predict": spec.predict}[command]
        if pair is None:
            raise UsageError(f"{prog}: {name} has no `{command}` command")
        config_cls, fn = pair
    config = parse_config(config_cls, argv, prog)
    return fn(config)


TRAINER_COMMANDS = ("train", "eval", "sample", "predict")


def _tool_name(argv: list[str]) -> str | None:
    """The command word when it is not a built-in command (``rlgen style ...``), else None."""
    for arg in argv:
        if arg == "--debug":
            continue
        if arg.startswith("-"):
            return None
        return None if arg in (*TRAINER_COMMANDS, "list") else arg
    return None


def _run_tool(name: str, argv: list[str]) -> Any:
    from rlgen.registry import TOOLS

    if name not in TOOLS:
        commands = ", ".join([*TRAINER_COMMANDS, "list", *TOOLS.names()])
        raise UsageError(f"rlgen: unknown command {name!r}; choose from {commands}")
    spec = TOOLS.create(name)
    return spec.run(parse_config(spec.config, argv, f"rlgen {name}"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rlgen", description=rlgen.__doc__)
    parser.add_argument("--version", action="version", version=f"rlgen {rlgen.__version__}")
    parser.add_argument(
        "--debug", action="store_true",
        help=f"re-raise every error with its full traceback, input errors included "
             f"(same as {DEBUG_ENV}=1); goes before the command",
    )
    sub = parser.add_subparsers(dest="command",
                                metavar="{train,eval,sample,predict,list,TOOL}")
    for command, help_text in (
        ("train", "train a model or agent: rlgen train NAME --help"),
        ("eval", "evaluate a checkpoint: rlgen eval NAME --checkpoint PATH"),
        ("sample", "sample from a generative checkpoint: rlgen sample NAME --checkpoint PATH"),
        ("predict", "run a checkpoint on your inputs: rlgen predict NAME --checkpoint PATH"),
    ):
        p = sub.add_parser(command, help=help_text, add_help=False)
        p.add_argument("name", nargs="?", help="what to run (see `rlgen list trainers`)")
        p.add_argument("-h", "--help", action="store_true")
    p = sub.add_parser("list", help="list registered backbones, models, agents, datasets, "
                                    "trainers, tools (TOOL: rlgen TOOL --help, e.g. style)")
    p.add_argument("kind", nargs="?", choices=list(REGISTRIES))
    return parser


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _debug_requested(argv: list[str]) -> bool:
    """``RLGEN_DEBUG`` set (not 0/false/no/off), or ``--debug`` among the options before the
    command (looked up by hand so that it also holds when parsing the command line fails)."""
    value = os.environ.get(DEBUG_ENV, "").strip().lower()
    if value not in ("", "0", "false", "no", "off"):
        return True
    for arg in argv:
        if arg == "--debug":
            return True
        if not arg.startswith("-") or arg == "--":
            return False
    return False


_USER_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` is input a user can fix (one line, exit status 2) rather than a bug."""
    if isinstance(exc, (UsageError, UnknownNameError, InputError, *_USER_PATH_ERRORS)):
        return True
    # The backbones keep their own error types (they do not import rlgen.errors). Look them up
    # only if their modules were imported: otherwise nothing can have raised them.
    for module, name in (("rlgen.vision.backbones.base", "BackboneInputError"),
                         ("rlgen.vision.backbones.weights", "WeightsError")):
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _report(exc: Exception) -> int:
    """Print ``exc`` the way the error policy says (module docstring); returns the exit status."""
    sys.stdout.flush()
    if _is_input_error(exc):
        message = _first_line(exc)
        print(message if message.startswith("rlgen") else f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, OSError):  # the machine, not the input nor rlgen: disk full, ...
        print(f"error: {type(exc).__name__}: {_first_line(exc)} "
              f"(rlgen --debug shows the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {type(exc).__name__}: {_first_line(exc)} (a bug in rlgen or a plugin? the "
          f"traceback above shows where; {DEBUG_ENV}=1 also shows tracebacks for input errors)",
          file=sys.stderr)
    return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Run the ``rlgen`` command; returns the exit status (see the module docstring)."""
    set_openmp_defaults()  # before anything imports torch

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    parser = build_parser()
    try:
        tool = _tool_name(argv)
        if tool is not None:
            _run_tool(tool, argv[argv.index(tool) + 1:])
            return 0
        args, rest = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "list":
            if rest:
                raise UsageError(f"rlgen list: unexpected arguments {' '.join(rest)}")
            cmd_list(args.kind)
            return 0
        if args.name is None:
            if args.help:
                print(f"usage: rlgen {args.command} NAME [--help] [options]\n\n"
                      f"NAME is one of: {', '.join(TRAINERS.names())}")
                return 0
            raise UsageError(f"rlgen {args.command}: say what to run, one of: "
                             f"{', '.join(TRAINERS.names())}")
        if args.help:
            rest = ["--help", *rest]
        _run_spec(args.command, args.name, rest)
        return 0
    except SystemExit as exc:  # --help and --version exit through argparse
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)  # sys.exit("message")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        return _report(exc)


if __name__ == "__main__":
    sys.exit(main())
