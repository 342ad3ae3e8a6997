"""The `lowloss` command. Each subcommand lives in lowloss/commands/<name>.py and is imported lazily."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys

import click

from .utils import LowlossError

# name -> module; a module exposes `command` (a click.Command). Listed in the order `--help` shows them.
COMMANDS = {
    "study": "lowloss.commands.study",
    "train": "lowloss.commands.train",
    "eval": "lowloss.commands.eval",
    "connect": "lowloss.commands.connect",
    "plane": "lowloss.commands.plane",
    "ensemble": "lowloss.commands.ensemble",
    "fge": "lowloss.commands.fge",
    "sse": "lowloss.commands.sse",
    "swa": "lowloss.commands.swa",
    "swag": "lowloss.commands.swag",
    "budget": "lowloss.commands.budget",
    "simplex": "lowloss.commands.simplex",
    "espro": "lowloss.commands.espro",
    "complex": "lowloss.commands.complex",
    "dimension": "lowloss.commands.dimension",
    "calibrate": "lowloss.commands.calibrate",
    "shift": "lowloss.commands.shift",
    "regression": "lowloss.commands.regression",
    "spirals": "lowloss.commands.spirals",
    "vardrop": "lowloss.commands.vardrop",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [n for n, m in COMMANDS.items() if importlib.util.find_spec(m) is not None]

    def get_command(self, ctx, name):
        mod = COMMANDS.get(name)
        if mod is None or importlib.util.find_spec(mod) is None:
            return None
        return importlib.import_module(mod).command


def common_options(out: str | None = None, seed: int = 0):
    """The options every lowloss command shares: --out, --seed, --device, --quiet."""

    def deco(f):
        @click.option("--quiet", "-q", is_flag=True, help="No progress bars or messages (errors still print).")
        @click.option("--device", default="auto", show_default=True,
                      help="auto (CUDA if available, else CPU), cpu, cuda, cuda:1, mps.")
        @click.option("--seed", type=int, default=seed, show_default=True, help="Random seed; runs are reproducible.")
        @click.option("--out", type=click.Path(file_okay=False), default=out, required=out is None,
                      show_default=out is not None, help="Output run directory.")
        @functools.wraps(f)
        def wrapper(*a, **kw):
            return f(*a, **kw)

        return wrapper

    return deco


def data_options(f):
    """--data, --data-dir and --data-seed (the fixed train/test split), shared by commands that load data."""
    f = click.option("--data-seed", type=int, default=0, show_default=True,
                     help="Seed of the fixed train/test split or synthetic draw (keep it equal across runs "
                          "you want to connect or ensemble).")(f)
    f = click.option("--data-dir", type=click.Path(), default=None,
                     help="Folder with torchvision-format mnist / fashion-mnist / cifar10 / cifar100 (never downloaded).")(f)
    f = click.option("--data", default="digits", show_default=True,
                     help="digits, mnist5k, spirals, regression1d (embedded) or mnist, fashion-mnist, cifar10, "
                          "cifar100 (with --data-dir).")(f)
    return f


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lowloss")
def cli():
    """lowloss: find, measure and use the low-loss regions of neural-network loss surfaces.

    Every command writes a run directory (safetensors weights, JSON config/metrics, PNG figures) and
    takes earlier run directories as inputs: train -> connect -> plane, train -> fge/swa/swag -> ensemble.
    """


def main(argv=None):
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="lowloss")
    except LowlossError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("interrupted; run the same command with --resume to continue", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command with --resume to continue", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
