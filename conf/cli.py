"""The command line shared by fedge's Hydra apps (``fedge-sim``, ``fedge-server``).

Hydra parses the overrides, composes the config and runs the job; :func:`run` adds
what Hydra leaves to each app:

- **Checked before anything is written.** The overrides are composed once with Hydra's
  Compose API (``hydra.compose``) and the app's own check runs on the result, before
  ``hydra.main`` creates an output directory. A sweep (``-m a=1,2``) is checked value by
  value.
- **Unknown keys are refused** with the closest valid name (difflib over the composed
  config's keys and the config group names), with or without ``+``. A ``+key=value``
  may only add a key where the schema is open: the constructor arguments of a
  ``_target_`` node (``+task.train_size=...``; checked against the constructor's
  signature) or a free-form mapping (``+device.mix.watch=0.1``), never a top-level key
  or a field of a typed section (``+compresion=topk``, ``+client.lrr=1``).
- **One error style.** Every configuration error, Hydra's or the app's, is one line
  ``<prog>: configuration error: <key>: <what>`` on stderr and exit status 2; no
  traceback (``HYDRA_FULL_ERROR=1`` still shows Hydra's).
- **A rejected run leaves no output directory.** If the job itself refuses its config
  (an error only the job can see), the files Hydra wrote for it (``.hydra/``, the job
  log) and the directories this run created for them are removed, if nothing else was
  written there; nothing else is ever deleted.
- **Real ``--help``:** what the command does, the config groups with their options, the
  top-level settings with their defaults, examples and where results go, generated from
  the config tree so it stays true (Hydra's help template can list groups only all
  together, internal ones included). ``--hydra-help`` is Hydra's.

Written by hand because Hydra has no hook between composing the config and creating the
run directory, and reports its own errors with exit status 1 in its own style.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

#: The config tree (``conf/``), this module's own folder.
CONF_DIR = Path(__file__).resolve().parent
#: Exit status of a refused configuration (as argparse uses for bad arguments).
EXIT_CONFIG = 2
#: Files Hydra writes into a run directory before the job starts.
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")
#: Hydra flags after which fedge hands the command line to Hydra untouched.
HYDRA_ONLY = ("hydra_help", "info", "shell_completion", "config_path", "config_name", "config_dir", "experimental_rerun")
#: Hydra's modes, one per command.
MODES = ("run", "multirun", "cfg", "info", "shell_completion")
#: At most this many lines of one error message reach the terminal.
MAX_ERROR_LINES = 8


@dataclass(frozen=True)
class HydraApp:
    """One Hydra console command.

    ``job`` runs a composed config (Hydra's task function); ``check`` validates one
    before anything runs (raise one of ``config_errors`` naming the key). ``flags``
    are shorthands expanded to overrides (``{"--resume": "server.resume=true"}``).
    ``summary``, ``examples``, ``writes`` (what a run leaves in its directory) and
    ``knobs`` (dotted keys whose defaults are shown next to the top-level ones) go
    into ``--help``. ``prepare`` is called once the command line passed every check,
    before Hydra composes the run again and writes anything (with the first job's composed
    config, read-only): the place to start slow background work a run will need
    (``fedge-sim``: the worker processes' fork server, importing torch on another core).
    """

    prog: str
    job: Callable[[DictConfig], Any]
    summary: str
    examples: Sequence[str]
    writes: str
    config_errors: tuple[type[BaseException], ...] = (ValueError,)
    check: Callable[[DictConfig], object] | None = None
    flags: Mapping[str, str] = field(default_factory=dict)
    knobs: Sequence[str] = ()
    hidden_groups: Sequence[str] = ()  # groups this command ignores, left out of --help
    config_name: str = "config"
    prepare: Callable[[DictConfig], object] | None = None


class ConfigurationError(ValueError):
    """An override that cannot be used; ``key`` is the key or group it names."""

    def __init__(self, key: str, what: str) -> None:
        super().__init__(f"{key}: {what}" if key else what)
        self.key = key


def run(app: HydraApp, argv: Sequence[str] | None = None) -> None:
    """Run ``app`` on ``argv`` (default ``sys.argv[1:]``): check, then hand to Hydra."""
    args = [app.flags.get(arg, arg) for arg in (sys.argv[1:] if argv is None else argv)]
    parsed = _parse(args)
    if parsed.help:
        print(help_text(app))
        sys.exit(0)
    if sum(bool(getattr(parsed, mode)) for mode in MODES) > 1:
        print(f"{app.prog}: use only one of --run, --multirun, --cfg, --info, --shell-completion", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    existing: set[Path] | None = None  # folders there before the run (None: not known)
    if not any(getattr(parsed, name) for name in HYDRA_ONLY):
        try:
            hydra_cfg = check_overrides(app, parsed.overrides, multirun=parsed.multirun, semantic=parsed.cfg is None)
        except _refusals(app) as exc:
            fail(app.prog, str(exc))
        existing = _existing_dirs(hydra_cfg)
        if app.prepare is not None and parsed.cfg is None:
            app.prepare(hydra_cfg)
    sys.argv = [app.prog, *args]
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=app.config_name)(_guarded(app, existing))()


def _refusals(app: HydraApp) -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this configuration cannot run"."""
    return (ConfigurationError, *app.config_errors)


def fail(prog: str, message: str) -> NoReturn:
    """Print a configuration error in fedge's one style and exit with status 2."""
    lines = message.strip().splitlines() or ["invalid configuration"]
    if len(lines) > MAX_ERROR_LINES:
        lines = [*lines[: MAX_ERROR_LINES - 1], "..."]
    print(f"{prog}: configuration error: " + "\n  ".join(lines), file=sys.stderr)
    sys.exit(EXIT_CONFIG)


# ---------------------------------------------------------------------------- checking


def check_overrides(app: HydraApp, overrides: Sequence[str], multirun: bool = False, semantic: bool = True) -> DictConfig:
    """Compose ``overrides`` as Hydra will and refuse any that cannot be used.

    Raises :class:`ConfigurationError` (unknown key, bad type or value, no such option)
    or one of the app's ``config_errors`` (its own ``check``, if ``semantic``). With
    ``multirun`` each value of a sweep is composed in turn (the others at their first
    value). Returns the first composed config, with its ``hydra`` node.
    """
    first: DictConfig | None = None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=app.prog):
        parsed = _parse_overrides(overrides)
        for variant in _variants(parsed) if multirun else [list(overrides)]:
            cfg = _compose(app, variant, parsed)
            _check_additions(app, variant, parsed)
            job_cfg = _without_hydra(cfg)
            if semantic and app.check is not None:
                try:
                    app.check(job_cfg)
                except OmegaConfBaseException as exc:  # e.g. a key deleted with ~key
                    raise ConfigurationError(str(getattr(exc, "full_key", "") or ""), _first_line(str(exc), "bad config")) from None
            first = first or cfg
    assert first is not None
    return first


def _parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Hydra's reading of each override (glob sweeps see the config groups)."""
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    parsed: list[Override] = []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except OverrideParseException as exc:
            raise ConfigurationError(_override_key(line), f"cannot read {line!r}: {_first_line(str(exc), 'bad syntax')}") from None
    return parsed


def _variants(parsed: list[Override]) -> Iterator[list[str]]:
    """Override lists covering every value of every sweep (the others at their first);
    an interval sweep (for optimising sweepers) is left to Hydra as written."""
    sweeps = {i: list(o.sweep_string_iterator()) for i, o in enumerate(parsed) if o.is_discrete_sweep()}
    base = [f"{o.get_key_element()}={sweeps[i][0]}" if i in sweeps else (o.input_line or "") for i, o in enumerate(parsed)]
    base = [line if not parsed[i].is_interval_sweep() else "" for i, line in enumerate(base)]
    yield [line for line in base if line]
    for i, values in sweeps.items():
        for value in values[1:]:
            yield [f"{parsed[i].get_key_element()}={value}" if j == i else line for j, line in enumerate(base) if line]


def _compose(app: HydraApp, overrides: list[str], parsed: list[Override]) -> DictConfig:
    try:
        return compose(config_name=app.config_name, overrides=overrides, return_hydra_config=True)
    except Exception as exc:  # Hydra's ConfigCompositionException & co: explain in one line
        raise _explain(app, exc, parsed) from None


def _explain(app: HydraApp, exc: BaseException, parsed: list[Override]) -> ConfigurationError:
    """Turn a Hydra composition error into ``<key>: <what>``."""
    text = str(exc)
    cause = str(exc.__cause__) if exc.__cause__ is not None else ""
    if match := re.search(r"Could not override '([^']+)'", text):
        return _unknown(app, match.group(1), parsed)
    if match := re.search(r"Could not find '([^']+)/([^'/]+)'", text):
        group, option = match.groups()
        options = _group_options(group)
        hint = _did_you_mean(option, options) or "."
        return ConfigurationError(group, f"no option {option!r}{hint} Options: {', '.join(options)}")
    if match := re.search(r"An item is already at '([^']+)'", text):
        return ConfigurationError(match.group(1), "already set; leave out the '+' to change it")
    if match := re.search(r"Could not delete from config. (?:The value of )?'?([\w.]+)'?", text):
        return ConfigurationError(match.group(1), _first_line(text, "cannot delete"))
    if match := re.search(r"(?:Ambiguous value for argument|Sweep parameters) '([^'=]+)=", text):
        return ConfigurationError(match.group(1), "several values: add -m to run one job per value")
    if match := re.search(r"Error merging override ([^\s=]+)=", text):
        key = match.group(1).lstrip("+~")
        what = _first_line(cause or text, "bad value")
        if "is not in struct" in what or ("Key '" in what and "not in" in what):
            return _unknown(app, key, parsed)
        return ConfigurationError(key, what)
    full_key = re.search(r"full_key: (\S+)", cause or text)
    return ConfigurationError(full_key.group(1) if full_key else "", _first_line(text, "cannot compose the config"))


def _check_additions(app: HydraApp, variant: list[str], parsed: list[Override]) -> None:
    """Refuse ``+key=value`` where the schema is closed (a typo adds a key nobody reads)."""
    adds = [o for o in parsed if (o.is_add() or o.is_force_add()) and not o.is_hydra_override() and o.package is None]
    if not adds:  # listing the groups walks Hydra's repository (~0.3 s): only when there is a '+'
        return
    groups = set(_all_groups())
    added = [o for o in adds if o.key_or_group not in groups]  # +group=option extends the defaults list
    if not added:
        return
    keys = {o.key_or_group for o in added}
    base = _compose(app, [line for line in variant if _override_key(line) not in keys], parsed)
    for override in added:
        key = override.key_or_group
        if override.is_force_add() and OmegaConf.select(base, key, default=None, throw_on_missing=False) is not None:
            continue  # ++ on a key that is there: a plain change
        parent_key, _, name = key.rpartition(".")
        parent = base if not parent_key else OmegaConf.select(base, parent_key, default=None)
        if not isinstance(parent, DictConfig) or not _is_open(parent, root=not parent_key):
            raise _unknown_in(key, _keys(_without_hydra(base)), sorted(groups), added=True)
        if "_target_" in parent:
            _check_argument(parent_key, name, str(parent["_target_"]))


def _override_key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _is_open(node: DictConfig, root: bool) -> bool:
    """A mapping that takes new keys: not the root, not a typed (dataclass) section."""
    return not root and OmegaConf.get_type(node) in (dict, None)


def _check_argument(parent_key: str, name: str, target: str) -> None:
    """A key added to a ``_target_`` node must be a parameter of that constructor."""
    try:
        params = inspect.signature(get_object(target)).parameters
    except Exception:  # not importable here: instantiating it will say why
        return
    if name in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
    raise ConfigurationError(
        f"{parent_key}.{name}", f"{target.rsplit('.', 1)[-1]} takes no argument {name!r}{_did_you_mean(name, names)}"
    )


def _unknown(app: HydraApp, key: str, parsed: list[Override]) -> ConfigurationError:
    """``key`` is not in the config: suggest from the config that the group choices give."""
    groups = _all_groups()
    choices = [o.input_line or "" for o in parsed if o.key_or_group in groups and not o.is_sweep_override()]
    try:
        cfg = compose(config_name=app.config_name, overrides=choices)
    except Exception:
        cfg = compose(config_name=app.config_name)
    return _unknown_in(key, _keys(cfg), groups, added=False)


def _unknown_in(key: str, keys: Sequence[str], groups: Sequence[str], added: bool) -> ConfigurationError:
    visible = [g for g in groups if _is_public_group(g)]
    hint = _did_you_mean(key, [*keys, *visible])
    where = " ('+' adds keys only to a _target_'s arguments or a free-form mapping)" if added and not hint else ""
    return ConfigurationError(key, f"unknown key{hint}{where}")


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not close and "." in word:  # compare the last part with the siblings' last parts
        parent, _, leaf = word.rpartition(".")
        siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
        close = [siblings[m] for m in difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)]
    return f", did you mean {close[0]!r}?" if close else ""


def _keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of ``cfg`` (mappings and their leaves)."""
    keys: list[str] = []
    for name, node in cfg.items_ex(resolve=False):
        key = prefix + str(name)
        keys.append(key)
        if isinstance(node, DictConfig):
            keys += _keys(node, f"{key}.")
    return keys


def _without_hydra(cfg: DictConfig) -> DictConfig:
    job = copy.deepcopy(cfg)
    with open_dict(job):
        job.pop("hydra", None)
    return job


def _all_groups(parent: str = "") -> list[str]:
    loader = GlobalHydra.instance().config_loader()
    groups: list[str] = []
    for name in loader.list_groups(parent):
        path = f"{parent}/{name}" if parent else name
        groups += [path, *_all_groups(path)]
    return groups


def _group_options(group: str) -> list[str]:
    return list(GlobalHydra.instance().config_loader().get_group_options(group))


def _is_public_group(group: str) -> bool:
    """A group a user picks from: top level, not Hydra's, not a schema base."""
    return "/" not in group and not group.startswith("hydra") and not group.endswith("_base")


def _first_line(text: str, default: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("full_key", "object_type", "reference_type", "Set the environment")):
            return line
    return default


def _parse(args: Sequence[str]) -> argparse.Namespace:
    """The command line as Hydra reads it (only what fedge needs to know)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--help", "-h", action="store_true")
    parser.add_argument("--hydra-help", action="store_true")
    parser.add_argument("--multirun", "-m", action="store_true")
    parser.add_argument("--cfg", "-c")
    parser.add_argument("--package", "-p")
    parser.add_argument("--resolve", action="store_true")
    parser.add_argument("--run", "-r", action="store_true")
    parser.add_argument("--shell-completion", "-sc", action="store_true")
    parser.add_argument("--config-path", "-cp")
    parser.add_argument("--config-name", "-cn")
    parser.add_argument("--config-dir", "-cd")
    parser.add_argument("--experimental-rerun")
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("--version", action="store_true")
    parser.add_argument("overrides", nargs="*")
    parsed, _unknown_flags = parser.parse_known_args(list(args))  # Hydra reports unknown flags itself
    parsed.hydra_help = parsed.hydra_help or parsed.version
    return parsed


# ------------------------------------------------------------------- rejected runs


def _guarded(app: HydraApp, existing: set[Path] | None) -> Callable[[DictConfig], Any]:
    """``app.job`` refusing its config in fedge's style, leaving no run directory."""

    @functools.wraps(app.job)  # keeps the job's module: Hydra names the job (and its log) after it
    def job(cfg: DictConfig) -> Any:
        try:
            return app.job(cfg)
        except _refusals(app) as exc:
            _remove_rejected_run(existing)
            fail(app.prog, str(exc))

    return job


def _existing_dirs(cfg: DictConfig) -> set[Path]:
    """The directories on the way to this run's output folders that exist already."""
    existing: set[Path] = set()
    for pattern in ("hydra.run.dir", "hydra.sweep.dir"):
        path = Path(str(OmegaConf.select(cfg, pattern))).absolute()
        existing |= {p for p in [path, *path.parents] if p.exists()}
    return existing


def _remove_rejected_run(existing: set[Path] | None) -> None:
    """Remove what Hydra wrote for the running job, and the folders this run created:
    empty ones not in ``existing``, inside the working directory (with ``existing``
    unknown, only the job's own folder). The working directory itself always stays."""
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir).absolute()
    cwd = Path.cwd().absolute()
    keep = {*(existing or ()), cwd, *cwd.parents}
    for name in [*HYDRA_FILES, f"{hydra_cfg.job.name}.log"]:
        (out / name).unlink(missing_ok=True)
    folders = [out / ".hydra", out]
    if hydra_cfg.mode == RunMode.MULTIRUN:  # the sweep's folder: only if this job was its first
        sweep = Path(hydra_cfg.sweep.dir).absolute()
        folders.append(sweep)
        if out not in keep and _rmdir(out / ".hydra") and _rmdir(out) and sweep not in keep and [p.name for p in sweep.iterdir()] == ["multirun.yaml"]:
            (sweep / "multirun.yaml").unlink()
    if existing is not None:
        folders += [p for p in folders[-1].parents if cwd in p.parents]
    for folder in folders:
        if folder in keep or not _rmdir(folder):
            return


def _rmdir(path: Path) -> bool:
    """Remove ``path`` if it is an empty directory; True if it is gone."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------ help


def help_text(app: HydraApp) -> str:
    """``--help``: generated from the config tree (groups, options, defaults)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=app.prog):
        cfg = compose(config_name=app.config_name, return_hydra_config=True)
        picked = {g: str(c) for g, c in cfg.hydra.runtime.choices.items() if _is_public_group(g) and g not in app.hidden_groups}
        choices = {g: picked[g] for g in sorted(picked, key=list(cfg).index)}  # in the config's order
        options = {g: _group_options(g) for g in choices}
    job = _without_hydra(cfg)
    width = 80
    out = [f"usage: {app.prog} [-m] [GROUP=OPTION ...] [KEY=VALUE ...]", ""]
    out += textwrap.wrap(app.summary, width)
    out += ["", "Groups (GROUP=OPTION; * = default):"]
    for group, default in choices.items():
        listed = [f"{o}*" if o == default else o for o in [default, *sorted(o for o in options[group] if o != default)]]
        out += textwrap.wrap(" | ".join(listed), width, initial_indent=f"  {group:<12} ", subsequent_indent=" " * 15, break_on_hyphens=False)
    out += ["", "Settings (KEY=VALUE; default shown):"]
    scalars = [str(k) for k, v in job.items_ex(resolve=False) if not isinstance(v, (DictConfig, ListConfig))]
    settings = [k + "=" + _show(OmegaConf.select(job, k, throw_on_missing=False)) for k in [*scalars, *app.knobs]]
    out += textwrap.wrap("  ".join(settings), width, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)
    out += textwrap.wrap(
        f"Every key of every group can be set (GROUP.KEY=VALUE); `{app.prog} --cfg job` prints them all.",
        width, initial_indent="  ", subsequent_indent="  ")
    out += ["", "Examples:", *(f"  {e}" for e in app.examples)]
    run_dir, sweep_dir = (_pattern(OmegaConf.to_container(cfg.hydra[k], resolve=False)["dir"]) for k in ("run", "sweep"))  # type: ignore[index, call-overload]
    out += ["", "Results:"]
    out += textwrap.wrap(f"each run writes {app.writes} to {run_dir}/ (with -m: {sweep_dir}/<job number>/); "
                         "hydra.run.dir=PATH chooses another folder.", width, initial_indent="  ", subsequent_indent="  ")
    out += ["", "Options:"]
    flags = [(flag, f"= {override}") for flag, override in app.flags.items()]
    for flag, what in [("-h, --help", "this help"), ("-m, --multirun", "one job per value of a sweep: strategy=fedavg,fedprox"),
                       ("--cfg job", "print the composed config and exit"), *flags, ("--hydra-help", "Hydra's own options")]:
        out.append(f"  {flag:<16} {what}")
    return "\n".join(out)


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _pattern(template: str) -> str:
    """``outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}`` -> ``outputs/<date>/<time>``."""
    template = template.replace("${now:%Y-%m-%d}", "<date>").replace("${now:%H-%M-%S}", "<time>")
    return re.sub(r"\$\{[^}]*\}", "<...>", template)
