"""The configuration reference of docs/configuration.md, generated from the models' own field
descriptions: `python -m serve_app.config.reference --write docs/configuration.md` rewrites
what follows the marker there (a unit test fails when it is stale)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from serve_app.config.args import AppConfig, VoiceSource
from serve_app.config.keys import ApiKey, Limits
from serve_app.config.replica import SynthesizerUserConfig

MARKER = (
    "<!-- generated below: python -m serve_app.config.reference --write docs/configuration.md -->"
)
SECTIONS: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("App arguments (`applications[].args`)", AppConfig, "args"),
    ("A voice (`voices[]`)", VoiceSource, "voice"),
    ("An API key (`api_keys[]`, or a keys file's entries)", ApiKey, "api-key"),
    ("Limits (`key_limits`, `open_limits`, a key's `limits`)", Limits, "limits"),
    ("The model replica's `user_config` (Synthesizer)", SynthesizerUserConfig, "user-config"),
)


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML terms."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" \\| null" if type(None) in args else "")
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"map {type_name(args[0])} → {type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    elif isinstance(value, list):
        value = [
            v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v
            for v in value
        ]
    return f"`{json.dumps(value, default=str)}`"


def table(model: type[BaseModel]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        meaning = re.sub(r"\s+", " ", field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {type_name(field.annotation)} | {default(field)} | {meaning} |")
    return rows


def reference() -> str:
    out = [MARKER, "", "## Reference", ""]
    out.append(
        "Every key, its type, default and meaning, from the configuration models "
        "(`serve_app/config/`). An unknown key fails the deploy, naming the closest known one."
    )
    for title, model, _ in SECTIONS:
        out += ["", f"### {title}", "", *table(model)]
    return "\n".join(out) + "\n"


def written(text: str) -> str:
    """`text` (a page with the marker) with the reference after the marker made current."""
    head, marker, _ = text.partition(MARKER)
    if not marker:
        raise ValueError(f"no marker {MARKER!r} in the page")
    return head + reference()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="rewrite this page after its marker")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(reference())
        return
    args.write.write_text(written(args.write.read_text()))


if __name__ == "__main__":
    main()
