"""Finding a protocol: a built-in by name, or one defined in a user's own Python file.

Loading a file runs it (with :mod:`importlib`), exactly as ``python path/to/my_proto.py`` would:
pass only files you trust, as you would to pytest. Nothing else is ever executed or unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from tracekit.errors import TracekitError
from tracekit.hazards.ops import ProtocolSpec
from tracekit.hazards.protocols import PROTOCOLS


def load_file(path: str | Path) -> list[ProtocolSpec]:
    """The protocols (objects made by ``@protocol``) defined at the top level of a Python file."""
    p = Path(path)
    if not p.is_file():
        raise TracekitError("no such file", where=str(path), fix="pass the path of a .py file that defines a @protocol")
    digest = hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:12]
    name = f"tracekit_user_protocol_{digest}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise TracekitError("cannot be imported as a Python module", where=str(path), fix="pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except TracekitError as exc:
        raise exc.located(str(path)) from None
    except Exception as exc:  # the user's code failed to import: report it in one line
        raise TracekitError(f"importing it raised {type(exc).__name__}: {exc}", where=str(path),
                            fix="fix the error in the file (run it with python to see the traceback)") from None
    found: list[ProtocolSpec] = []
    for v in vars(module).values():
        if isinstance(v, ProtocolSpec) and all(v is not f for f in found):
            found.append(v)
    if not found:
        raise TracekitError("defines no protocol", where=str(path),
                            fix="decorate a build function with @tracekit.hazards.protocol(...)")
    return found


def resolve(name: str) -> ProtocolSpec:
    """A built-in protocol by name, or ``path/to/file.py`` (its only protocol) or
    ``path/to/file.py:name``."""
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    path, _, wanted = name.partition(":") if ".py:" in name else (name, "", "")
    if not path.endswith(".py"):
        raise TracekitError(f"unknown protocol {name!r}",
                            fix=f"use one of {', '.join(PROTOCOLS)} (tracekit fuzz --list), or a path to a .py file")
    specs = load_file(path)
    if wanted:
        for s in specs:
            if s.name == wanted:
                return s
        raise TracekitError(f"defines no protocol {wanted!r}", where=path,
                            fix=f"it defines {', '.join(s.name for s in specs)}")
    if len(specs) > 1:
        raise TracekitError(f"defines {len(specs)} protocols", where=path,
                            fix=f"pick one: {', '.join(path + ':' + s.name for s in specs)}")
    return specs[0]
