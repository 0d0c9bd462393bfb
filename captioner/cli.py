"""Command-line plumbing shared by the scripts: common options, config resolution, clean error exits.

Library code raises exceptions; :func:`run_script` is the one place that turns the expected ones
(bad config, bad checkpoint, bad data) into a one-line message and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, TypeVar

from captioner.config import ConfigError, apply_overrides, config_from_dict, load_config
from captioner.training.checkpoints import CheckpointError, load_checkpoint
from captioner.training.log import NonFiniteLossError

C = TypeVar("C")


def add_run_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    """``--config``, ``--set``, ``--device``, ``-c/--checkpoint`` and ``--no-progress``."""
    parser.add_argument("--config", default=default_config,
                        help=f"YAML run configuration (default: {default_config}); ignored with -c, "
                             "which resumes with the configuration stored in the checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-4 (repeatable; "
                             "also applies on top of a resumed checkpoint's configuration)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("-c", "--checkpoint", default=None,
                        help="resume this run exactly from one of its checkpoint*.pt files")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")


def resolve_run_config(args: argparse.Namespace, cls: type[C], kind: str) -> tuple[C, dict | None]:
    """The run's config and, when resuming with ``-c``, the loaded checkpoint payload."""
    if args.checkpoint:
        payload = load_checkpoint(args.checkpoint, kind=kind)
        if not isinstance(payload.get("config"), dict):
            raise CheckpointError(f"{args.checkpoint}: the checkpoint holds no run configuration")
        data = apply_overrides(payload["config"], args.set)
        return config_from_dict(cls, data, source=f"{args.checkpoint} (stored config)"), payload
    return load_config(cls, args.config, args.set), None


EXPECTED_ERRORS = (ConfigError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError)


TRAINING_INTERRUPTED = "interrupted: the last checkpoint written is complete; resume with -c"


def run_script(main: Callable[[list[str] | None], object], argv: list[str] | None = None,
               interrupted: str = TRAINING_INTERRUPTED) -> None:
    """Run ``main(argv)``; print expected errors as one line on stderr and exit with status 2, and on
    Ctrl-C print ``interrupted`` (the training scripts' default says how to resume) and exit with 130."""
    try:
        main(argv)
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
