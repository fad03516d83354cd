"""``rdrop-fairseq``: small commands around the plugin.

    rdrop-fairseq user-dir     print the folder to pass to fairseq's --user-dir
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
    args = parser.parse_args(argv)
    if args.command == "user-dir":
        print(user_dir())


if __name__ == "__main__":
    main()
