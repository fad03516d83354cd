"""``rdrop-fairseq``: small commands around the plugin.

    rdrop-fairseq user-dir     print the folder to pass to fairseq's --user-dir
    rdrop-fairseq quickstart   baseline vs R-Drop on one machine, the same updates each (--help for options)
    rdrop-fairseq check-checkpoint FILE...
                               whether checkpoints load with the allow-list (docs/checkpoint-safety.md),
                               running nothing in them; exit status 1 if one does not
"""
import argparse
import os
import sys


def user_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rdrop-fairseq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("user-dir", help="print the path for fairseq's --user-dir")
    sub.add_parser("quickstart", add_help=False, help="baseline vs R-Drop on one machine, the same updates each")
    check = sub.add_parser("check-checkpoint", help="whether checkpoints load with the allow-list, running nothing")
    check.add_argument("checkpoints", nargs="+", metavar="FILE")
    args, rest = parser.parse_known_args(argv)
    if args.command == "quickstart":
        from rdrop_fairseq.recipes import quickstart, quickstart_cli

        quickstart.main(rest, quickstart_cli.OneLineErrors(prog="rdrop-fairseq quickstart"))
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    elif args.command == "user-dir":
        print(user_dir())
    elif args.command == "check-checkpoint":
        sys.exit(check_checkpoints(parser, args.checkpoints))


def check_checkpoints(parser, paths) -> int:
    from rdrop_fairseq import safe_load

    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        parser.error(f"check-checkpoint: no such file: {', '.join(missing)}")
    results = [safe_load.check(path) for path in paths]
    for _, line in results:
        print(line)
    verdicts = {verdict for verdict, _ in results}
    if "refused" in verdicts:
        print(f"Load a refused file only if you trust it: {safe_load.TRUST_ENV}=1, or "
              f"{safe_load.TRUST_FLAG} with an R-Drop task.", file=sys.stderr)
    return 0 if verdicts == {"loads"} else 1


if __name__ == "__main__":
    main()
