"""The `lowloss` command: one subcommand per method, its options generated from the method's Config.

A method module (``lowloss.methods.<name>``, see :data:`lowloss.api.METHODS`) defines ``Config`` (defaults
and help), ``INPUTS`` (its positional run directories, or None), ``fit`` and ``summary`` (and
``RESUME_BY_DEFAULT = True`` when re-running a command should continue its interrupted run);
:func:`method_command` turns it into a click command, so no default or help text is written twice. Listing the commands (``lowloss --help``)
imports no method module: the one-line descriptions live in :data:`COMMANDS`.
"""

from __future__ import annotations

import functools
import importlib
import sys

import click

from .config import fields_of
from .errors import LowlossError

# name -> one-line description, in the order `--help` shows them; `study` is lowloss.study.command, every
# other name is a method (lowloss.api.METHODS)
COMMANDS: dict[str, str] = {
    "study": "Run the whole study into --out (resumable stages), then summary.json and report.html.",
    "train": "Train one network with SGD (a mode).",
    "eval": "Accuracy, NLL, ECE and Brier of runs and of their ensemble.",
    "connect": "Connect two runs with a trained low-loss curve.",
    "plane": "The loss surface on the plane through three runs, a curve or a simplex face.",
    "ensemble": "Evaluate an ensemble of runs, snapshots or SWAG samples.",
    "fge": "Fast Geometric Ensembling from a trained run.",
    "sse": "Snapshot ensemble: cosine restarts from scratch.",
    "swa": "Stochastic Weight Averaging from a trained run.",
    "swag": "SWAG / MultiSWAG from trained runs, or SWAG over a curve's bends.",
    "budget": "FGE, SSE, SWA, SWAG, MultiSWAG and deep ensembles at equal budget.",
    "simplex": "SPRO: a low-loss simplex grown from one run.",
    "espro": "ESPRO simplex ensembles grown from each run.",
    "complex": "A simplicial complex connecting several modes (SPRO).",
    "dimension": "The dimensionality of the low-loss valley between two modes.",
    "calibrate": "Calibration and temperature scaling of runs.",
    "shift": "Ensembles under dataset shift (corrupted test images).",
    "regression": "1-D regression uncertainty bands.",
    "spirals": "Two spirals: functional diversity inside a simplex.",
    "vardrop": "Variational dropout and variance networks.",
    "animate": "The curve-training video (MP4, GIF) of a connect run with --frames.",
    "width": "Optimum width of SGD and SWA: the loss along their line and along random rays.",
    "align": "Permute a run's hidden units to match another run (weight matching).",
    "sightsee": "Train a loss plane near a run whose landscape draws a picture.",
}


def _click_type(spec):
    if spec.choices:
        return click.Choice([str(c) for c in spec.choices])
    if spec.parse is not None or spec.type in (dict, list, tuple) or getattr(spec.type, "__origin__", None):
        return str
    return spec.type if spec.type in (int, float, str) else str


def config_options(config_cls, skip: tuple[str, ...] = ()):
    """A decorator that adds one click option per field of `config_cls` (not those in `skip`)."""

    def deco(f):
        for spec in reversed(fields_of(config_cls)):
            if spec.name in skip:
                continue
            kw = {"help": spec.help}
            if spec.type is bool:
                flag = spec.flag
                if spec.default:
                    f = click.option(f"{flag}/--no-{flag[2:]}", spec.name, default=True, show_default=True, **kw)(f)
                else:
                    f = click.option(flag, spec.name, is_flag=True, default=False, **kw)(f)
                continue
            if spec.multiple:
                f = click.option(spec.flag, spec.name, multiple=True, default=(), metavar=spec.metavar, **kw)(f)
                continue
            default = spec.default
            if isinstance(default, (tuple, list)) and spec.parse is not None:
                default = ",".join(str(d) for d in default)
            f = click.option(spec.flag, spec.name, type=_click_type(spec), default=default, nargs=spec.nargs or 1,
                             metavar=spec.metavar, show_default=default is not None and default != (), **kw)(f)
        return f

    return deco


def config_from_options(config_cls, kw: dict):
    """The Config built from the options that :func:`config_options` added (popped from `kw`)."""
    values = {}
    for spec in fields_of(config_cls):
        if spec.name not in kw:
            continue
        v = kw.pop(spec.name)
        if spec.multiple:
            v = tuple(v)
        if spec.nargs and not v:
            v = None
        if spec.parse is not None and v is not None:
            v = spec.parse(v)
        values[spec.name] = v
    return config_cls(**values)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or messages (errors still print).")


def out_option(default: str):
    return click.option("--out", type=click.Path(file_okay=False), default=default, show_default=True,
                        help="Output run directory.")


def run_options(name: str):
    """The options every method command shares: --out, --resume, --fresh, --no-plots, --quiet."""

    def deco(f):
        @quiet_option
        @click.option("--no-plots", is_flag=True, help="Write the data files only, no figures.")
        @click.option("--fresh", is_flag=True, help="Discard what --out holds from an earlier run and start over.")
        @click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
        @out_option(f"runs/{name}")
        @functools.wraps(f)
        def wrapper(*a, **kw):
            return f(*a, **kw)

        return wrapper

    return deco


def method_command(name: str) -> click.Command:
    """The click command of a method module: INPUTS as arguments, Config fields as options."""
    from .api import method_module

    mod = method_module(name)
    inputs = getattr(mod, "INPUTS", None)

    def callback(**kw):
        from .api import run

        out, resume, fresh, quiet, no_plots = (kw.pop(k) for k in ("out", "resume", "fresh", "quiet", "no_plots"))
        args = kw.pop("inputs", None) if inputs is not None else None
        if args is not None and not isinstance(args, (tuple, list)):
            args = [args]
        config = config_from_options(mod.Config, kw)
        resume = resume or getattr(mod, "RESUME_BY_DEFAULT", False)  # e.g. a plane's saved chunks
        result = run(name, config, list(args) if args is not None else None, out, resume=resume, fresh=fresh,
                     quiet=quiet, plots=not no_plots)
        text = (mod.summary(result) if hasattr(mod, "summary") and result else "").rstrip()
        if text.strip() and not quiet:  # a summary that starts on a new line is a table
            click.echo(f"{out}:{text}" if text.startswith("\n") else f"{out}: {text}")

    f = config_options(mod.Config)(run_options(name)(callback))
    if inputs is not None:
        f = click.argument("inputs", metavar=inputs["metavar"], nargs=inputs.get("nargs", -1),
                           required=inputs.get("required", True),
                           type=click.Path(exists=True, file_okay=False))(f)
    doc = (mod.__doc__ or "").strip()
    return click.command(name=name, help=doc, short_help=COMMANDS[name])(f)


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        if name == "study":
            return importlib.import_module("lowloss.study").command
        return method_command(name)

    def format_commands(self, ctx, formatter):  # the static descriptions: no method module is imported
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lowloss")
def cli():
    """lowloss: find, measure and use the low-loss regions of neural-network loss surfaces.

    Every command writes a run directory (safetensors weights, JSON config/metrics, PNG figures) and
    takes earlier run directories as inputs: train -> connect -> plane, train -> fge/swa/swag -> ensemble.
    """


# errno -> what to do about it, for the file-system errors a user can fix
OS_FIXES = {
    "ENOSPC": "the disk is full: free space or choose another --out, then run the same command again "
              "(with --resume if it had started)",
    "EDQUOT": "the disk quota is exceeded: free space or choose another --out, then run the same command again",
    "EROFS": "the location is read-only: choose a writable --out",
    "EACCES": "permission denied: fix the permissions of that path, or choose a writable --out",
    "EPERM": "operation not permitted: fix the permissions of that path, or choose a writable --out",
}


def os_error_message(e: OSError) -> str | None:
    """One line for a file-system error a user can fix (full disk, read-only, no permission), else None."""
    import errno as errno_mod

    name = errno_mod.errorcode.get(e.errno or -1, "")
    if name not in OS_FIXES:
        return None
    where = e.filename if e.filename is not None else "the output location"
    return f"{where}: {e.strerror or name} [{name}]; {OS_FIXES[name]}"


def main(argv=None):
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="lowloss")
    except LowlossError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        msg = os_error_message(e)
        if msg is None:
            raise
        click.echo(f"error: {msg}", err=True)
        sys.exit(1)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted; run the same command with --resume to continue", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
