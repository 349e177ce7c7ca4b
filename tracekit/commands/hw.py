"""`tracekit hw`: list the shipped hardware profiles, or show one with units and sources."""

from __future__ import annotations

import argparse

import polars as pl

from tracekit.commands.info import show
from tracekit.hardware import list_profiles, load_profile

HELP = "list hardware profiles, or show one (values, units, sources)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="hw_command", metavar="{list,show}", required=True)
    sub.add_parser("list", help="names and descriptions of the shipped profiles")
    show_p = sub.add_parser("show", help="every field of one profile with unit and source")
    show_p.add_argument("name", metavar="NAME", help="profile name (see tracekit hw list) or a .toml path")


def run(args: argparse.Namespace) -> int:
    if args.hw_command == "list":
        names = list_profiles()
        show(pl.DataFrame({"name": names, "description": [load_profile(n).description for n in names]}))
        return 0
    profile = load_profile(args.name)
    print(f"{profile.name}: {profile.description}")
    show(profile.table())
    return 0
