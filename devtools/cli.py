"""`python -m devtools`: the development commands, beside the production `lakehouse` CLI.

    python -m devtools kafka start|stop|status    the local broker on 127.0.0.1:9092
    python -m devtools produce [--count N ...]     synthetic or recorded events to Kafka
    python -m devtools demo [--events N ...]       broker, events, the jobs, a summary

Not a console script on purpose: every `[project.scripts]` entry ships with the wheel, and
these commands must not. Flags, settings and error handling are the production CLI's
(pipelines/cli.py), so `--lake-root`, `--bootstrap-servers` and `--topic` mean the same.
"""
from __future__ import annotations

import argparse
import sys

from pipelines.cli import KNOWN_ERRORS, add_common, run_command, settings_from

# The development tools' own one-line failures, on top of production's.
DEV_ERRORS = KNOWN_ERRORS | {"KafkaLocalError", "ProduceError", "RecordFileError"}


def _cmd_kafka(args: argparse.Namespace) -> int:
    from devtools import kafka_local

    settings = settings_from(args)
    if args.action == "start":
        st = kafka_local.start(settings)
        print(f"kafka: running on {st.bootstrap} (pid {st.pid}, data {st.data_dir})")
    elif args.action == "stop":
        stopped = kafka_local.stop(settings)
        print("kafka: stopped" if stopped else "kafka: was not running")
    else:
        st = kafka_local.status(settings)
        print(f"kafka: {'running' if st.running else 'not running'} on {st.bootstrap}"
              + (f" (pid {st.pid})" if st.pid else "") + (f": {st.detail}" if st.detail else ""))
        return 0 if st.running else 1
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    from devtools import produce

    produce.run(args, settings_from(args))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from devtools.demo import DemoOptions, run_demo

    options = DemoOptions(events=args.events, accounts=args.accounts, seed=args.seed, fresh=not args.keep)
    return run_demo(settings_from(args), options)


def build_parser() -> argparse.ArgumentParser:
    from devtools import produce

    parser = argparse.ArgumentParser(prog="devtools", description="Development tools of the usage-billing "
                                                                  "lakehouse (not shipped in the wheel)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="the local single-node Kafka broker (KRaft)")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    add_common(kafka)
    kafka.set_defaults(func=_cmd_kafka)

    prod = sub.add_parser("produce", help="send synthetic or recorded events to Kafka")
    produce.add_arguments(prod)
    if not any(a.dest == "lake_root" for a in prod._actions):
        prod.add_argument("--lake-root", help=argparse.SUPPRESS)
    prod.set_defaults(func=_cmd_produce)

    demo = sub.add_parser("demo", help="the whole local story: Kafka, events, jobs, summary")
    demo.add_argument("--events", type=int, default=10_000)
    demo.add_argument("--accounts", type=int, default=40)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--keep", action="store_true", help="keep the existing lake instead of starting fresh")
    add_common(demo)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, DEV_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
