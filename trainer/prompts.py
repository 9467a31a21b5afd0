"""Prompt sets named by a spec string: "shapes:<split>" for the built-in domain or "file:<path>" for a text file."""

from __future__ import annotations

from pathlib import Path

from trainer.shapes import SPLITS, prompt_split

SCHEMES = ("shapes", "file")


def check_prompt_spec(spec: str) -> str:
    """Refuse a malformed spec at validation time (the file itself is read where the run executes)."""
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise ValueError(
            f"prompt set {spec!r} is not understood; use 'shapes:<split>' with split in {{{', '.join(SPLITS)}}} "
            "or 'file:/path/to/prompts.txt'"
        )
    if scheme == "shapes" and rest not in SPLITS:
        raise ValueError(f"prompt set {spec!r}: unknown shapes split {rest!r}; allowed: {', '.join(SPLITS)}")
    return spec


def prompt_file(spec: str) -> str | None:
    """The path a "file:<path>" prompt set reads (as written, before `~` expansion); None for the built-in sets."""
    scheme, _, rest = check_prompt_spec(spec).partition(":")
    return rest if scheme == "file" else None


def load_prompts(spec: str) -> list[str]:
    """Load the prompt set named by `spec`.

    Args:
        spec: "shapes:train", "shapes:heldout", "shapes:all", or "file:/path/to/prompts.txt" (one prompt per line;
            blank lines and lines starting with "#" are skipped, surrounding whitespace stripped).

    Returns:
        The prompts, in order (duplicates kept: a file may weight prompts by repeating them).

    Raises:
        ValueError: for an unknown scheme or split, a missing or unreadable file (naming the path), or an empty set.
    """
    file = prompt_file(spec)
    if file is None:
        return prompt_split(spec.partition(":")[2])
    path = Path(file).expanduser()
    if not path.is_file():
        raise ValueError(f"prompt set {spec!r}: prompt file {str(path)!r} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"prompt set {spec!r}: cannot read prompt file {str(path)!r} as UTF-8 text: {err}") from err
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"prompt set {spec!r}: prompt file {str(path)!r} has no prompts (only blanks or # comments)")
    return prompts
