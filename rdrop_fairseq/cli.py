"""``rdrop-fairseq``: small commands around the plugin.

    rdrop-fairseq user-dir     print the folder to pass to fairseq's --user-dir
    rdrop-fairseq quickstart   baseline vs R-Drop on one machine, the same updates each (--help for options)
"""
import argparse
import os


def user_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rdrop-fairseq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("user-dir", help="print the path for fairseq's --user-dir")
    sub.add_parser("quickstart", add_help=False, help="baseline vs R-Drop on one machine, the same updates each")
    args, rest = parser.parse_known_args(argv)
    if args.command == "quickstart":
        from rdrop_fairseq import quickstart

        quickstart.main(rest, argparse.ArgumentParser(prog="rdrop-fairseq quickstart"))
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    elif args.command == "user-dir":
        print(user_dir())


if __name__ == "__main__":
    main()
