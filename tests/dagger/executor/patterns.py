"""The engine's exclude semantics for host directory uploads (module arguments' `Ignore` / `+ignore`).

How a patterns list reaches the files (dagger v0.21.8, /work/.mirror/dagger+dagger/repo):

- A module argument with `DefaultPath` and `Ignore([...])` is loaded by core/modfunc.go loadContextualArg →
  core/modulesource.go LoadContextDir(path, CopyFilter{Exclude: ignore}); for a local module that is
  `host.directory(path, exclude: ignore, noCache: true)`, `path` relative to the module root, or to the
  context directory (the git root) when it starts with "/" (DefaultPath("/") is the repository root).
  A non-contextual Directory argument gets the same patterns through `directory.withDirectory("/", dir,
  exclude: ignore)` (core/modfunc.go applyIgnoreOnDir).
- core/schema/host.go: each exclude pattern loses a leading "!", is dropped unless filepath.IsLocal (so
  "/x", "../x" and "" are silently ignored), is joined to "." (cleaned: "./a/" → "a"), "." becomes "*",
  and the "!" is put back (`host_excludes`).
- internal/fsutil/filter.go NewFilterFS/Walk: github.com/moby/patternmatcher v0.6.1 (go.mod; not vendored,
  its fork is util/patternmatcher, same semantics; the upstream source is /work/.mirror/moby+patternmatcher).
  patternmatcher.New trims spaces, skips empty patterns, filepath.Clean's each (trailing slash dropped, so
  "dir/" also matches a file "dir"), a leading "!" makes an exception ("!" alone is an error), and checks
  the syntax with filepath.Match. Every pattern is matched against the whole slash-separated path relative
  to the uploaded root, so it is anchored there: ".venv" is only the top-level .venv, "**/.venv" is any.
  `*` and `?` do not cross "/", `**` matches any number of components (also none), `[...]` is a class,
  `\\` escapes. Patterns apply in order; the last one that matches decides (MatchesUsingParentResults).
  A path is also excluded when one of its parent directories is (a pattern that matched a parent stays
  matched for its children).
- The walk prunes an excluded directory (never descends) unless an exception pattern could match inside
  it: when every exception is a literal path (after removing a trailing "/**" or "/*"), it descends only
  if an exception starts with "<dir>/"; when any exception has a glob character, it always descends. An
  excluded directory appears in the upload only if something inside it is included.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_EXACT, _PREFIX, _SUFFIX, _REGEXP = "exact", "prefix", "suffix", "regexp"
_PATTERN_CHARS = "*[]?^\\"  # filter.go patternChars on Linux


class BadPattern(ValueError):
    """A pattern the engine would reject (filepath.ErrBadPattern, or `!` alone)."""


def go_clean(path: str) -> str:
    """Go's filepath.Clean on Linux (posixpath.normpath keeps a leading "//"; Go does not)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def go_dir(path: str) -> str:
    """Go's filepath.Dir on Linux: everything before the last "/", cleaned; "." when there is none."""
    return go_clean(path[: path.rfind("/") + 1]) if "/" in path else "."


def go_is_local(path: str) -> bool:
    """Go's filepath.IsLocal on Linux: relative, non-empty, and not escaping with ".."."""
    if not path or path.startswith("/"):
        return False
    if any(part in (".", "..") for part in path.split("/")):
        path = go_clean(path)
    return path != ".." and not path.startswith("../")


def host_excludes(patterns: list[str]) -> list[str]:
    """The exclude patterns core/schema/host.go hands to the file sync for `host.directory(exclude:)`."""
    out = []
    for pattern in patterns:
        negative = pattern.startswith("!")
        pattern = pattern[1:] if negative else pattern
        if not go_is_local(pattern):
            continue
        pattern = go_clean(pattern)
        pattern = "*" if pattern == "." else pattern
        out.append("!" + pattern if negative else pattern)
    return out


def _get_esc(chunk: str) -> tuple[str, str]:
    """filepath getEsc: one possibly escaped character of a class; raise BadPattern if malformed."""
    if not chunk or chunk[0] in "-]":
        raise BadPattern
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise BadPattern
    rest = chunk[1:]
    if not rest:
        raise BadPattern
    return chunk[0], rest


def _check_chunk(chunk: str) -> None:
    """filepath matchChunk's syntax checks (with the name exhausted, it only parses)."""
    while chunk:
        head = chunk[0]
        if head == "[":
            chunk = chunk[1:]
            if chunk[:1] == "^":
                chunk = chunk[1:]
            ranges = 0
            while True:
                if chunk[:1] == "]" and ranges > 0:
                    chunk = chunk[1:]
                    break
                _, chunk = _get_esc(chunk)
                if chunk[0] == "-":
                    _, chunk = _get_esc(chunk[1:])
                ranges += 1
        elif head == "\\":
            chunk = chunk[1:]
            if not chunk:
                raise BadPattern
            chunk = chunk[1:]
        else:
            chunk = chunk[1:]


def _scan_chunks(pattern: str) -> list[str]:
    """filepath scanChunk, repeated: the pattern's chunks between unbracketed stars."""
    chunks = []
    while pattern:
        pattern = pattern.lstrip("*")
        in_range, i = False, 0
        while i < len(pattern):
            ch = pattern[i]
            if ch == "\\" and i + 1 < len(pattern):
                i += 1
            elif ch == "[":
                in_range = True
            elif ch == "]":
                in_range = False
            elif ch == "*" and not in_range:
                break
            i += 1
        chunks.append(pattern[:i])
        pattern = pattern[i:]
    return chunks


def check_syntax(pattern: str) -> None:
    """Raise BadPattern where Go's filepath.Match(pattern, ".") would return ErrBadPattern."""
    for chunk in _scan_chunks(pattern):
        _check_chunk(chunk)


@dataclass(frozen=True)
class Pattern:
    """One cleaned pattern of a patternmatcher.PatternMatcher, compiled the way Pattern.compile does."""

    text: str  # cleanedPattern, without the "!"
    exclusion: bool
    kind: str
    regexp: re.Pattern[str] | None

    def match(self, path: str) -> bool:
        """patternmatcher Pattern.match on a slash-separated relative path."""
        if self.kind == _EXACT:
            return path == self.text
        if self.kind == _PREFIX:
            return path.startswith(self.text[:-2])
        if self.kind == _SUFFIX:
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[0] == "/" and path == suffix[1:])
        assert self.regexp is not None
        return self.regexp.search(path) is not None

    def without_trailing_glob(self) -> str:
        """filter.go patternWithoutTrailingGlob."""
        text = self.text.removesuffix("/**")
        return text.removesuffix("/*")


def _translate(text: str) -> tuple[str, str]:
    """Pattern.compile: the match kind and the regular expression of a cleaned pattern."""
    reg, kind, i, n = "^", _EXACT, 0, 0
    while i < len(text):
        ch = text[i]
        i += 1
        if ch == "*" and text[i : i + 1] == "*":
            i += 1
            if text[i : i + 1] == "/":  # "**/" is "**"
                i += 1
            if i >= len(text):  # "**" at the end matches everything below
                if kind == _EXACT:
                    kind = _PREFIX
                else:
                    reg, kind = reg + ".*", _REGEXP
            else:
                reg, kind = reg + "(.*/)?", _REGEXP
            if n == 0:
                kind = _SUFFIX
        elif ch == "*":
            reg, kind = reg + "[^/]*", _REGEXP
        elif ch == "?":
            reg, kind = reg + "[^/]", _REGEXP
        elif ch in ".+()|{}$":
            reg += "\\" + ch
        elif ch == "\\":
            if i < len(text):
                reg, kind = reg + "\\" + text[i], _REGEXP
                i += 1
            else:
                reg += "\\"
        elif ch in "[]":
            reg, kind = reg + ch, _REGEXP
        else:
            reg += ch
        n += 1
    return kind, reg + r"\Z"  # Go's "$" without a multi-line flag: the very end


def compile_pattern(raw: str) -> Pattern | None:
    """patternmatcher.New for one pattern: None for a blank one; BadPattern for a malformed one."""
    text = raw.strip()
    if not text:
        return None
    text = go_clean(text)
    exclusion = text.startswith("!")
    if exclusion:
        if text == "!":
            raise BadPattern('illegal exclusion pattern: "!" (an exception needs a path after the "!")')
        text = text[1:]
    try:
        check_syntax(text)
    except BadPattern:
        raise BadPattern(
            f"syntax error in pattern {raw!r}: expected filepath.Match syntax (closed [...] classes, no "
            "range starting or ending with '-', no trailing '\\'); fix or escape the pattern"
        ) from None
    kind, reg = _translate(text)
    if kind != _REGEXP:
        return Pattern(text, exclusion, kind, None)
    try:
        return Pattern(text, exclusion, kind, re.compile(reg))
    except re.error as err:
        raise BadPattern(
            f"pattern {raw!r} does not compile ({err}); escape the character with '\\'"
        ) from None


@dataclass(frozen=True)
class Matcher:
    """A patternmatcher.PatternMatcher over exclude patterns, with filter.go's pruning rule."""

    patterns: tuple[Pattern, ...]

    @classmethod
    def of(cls, patterns: list[str]) -> Matcher:
        """Compile `patterns` as patternmatcher.New does (blank ones dropped)."""
        return cls(tuple(p for raw in patterns if (p := compile_pattern(raw)) is not None))

    def matches(self, path: str, parent: tuple[bool, ...] = ()) -> tuple[bool, tuple[bool, ...]]:
        """MatchesUsingParentResults: (excluded?, per-pattern matches to pass to the children)."""
        matched, info = False, [False] * len(self.patterns)
        for i, pattern in enumerate(self.patterns):
            match = bool(parent) and parent[i]
            if not match:
                if pattern.exclusion != matched:
                    continue
                match = pattern.match(path)
                if not match and not parent:  # no parent results: check every parent directory
                    parent_path = go_dir(path)
                    dirs = parent_path.split("/") if parent_path != "." else []
                    match = any(pattern.match("/".join(dirs[: k + 1])) for k in range(len(dirs)))
            info[i] = match
            if match:
                matched = not pattern.exclusion
        return matched, tuple(info)

    @functools.cached_property
    def _only_literal_exceptions(self) -> bool:
        """filter.go onlyPrefixExcludeExceptions: no exception has a glob character."""
        return not any(
            p.exclusion and any(c in p.without_trailing_glob() for c in _PATTERN_CHARS) for p in self.patterns
        )

    def prunes(self, directory: str) -> bool:
        """Whether the walk skips an excluded directory's contents (filter.go Walk's SkipDir)."""
        if not self._only_literal_exceptions:
            return False
        prefix = directory + "/"
        return not any(
            p.exclusion and (p.without_trailing_glob() + "/").startswith(prefix) for p in self.patterns
        )


@functools.lru_cache(maxsize=64)
def _matcher(patterns: tuple[str, ...]) -> Matcher:
    """The matcher for an Ignore list, as host.directory(exclude:) builds it."""
    return Matcher.of(host_excludes(list(patterns)))


def _check_rel_path(rel_path: str) -> list[str]:
    """The components of a path relative to the uploaded root; ValueError for anything else."""
    cleaned = go_clean(rel_path) if rel_path else "."
    if rel_path.startswith("/") or cleaned == "." or cleaned == ".." or cleaned.startswith("../"):
        raise ValueError(
            f"expected a path relative to the uploaded directory, like 'src/app.py'; got {rel_path!r} "
            "(the root itself is always uploaded)"
        )
    return cleaned.split("/")


def included(rel_path: str, patterns: list[str]) -> bool:
    """Whether `rel_path` (slash-separated, relative to the root) is uploaded with exclude `patterns`."""
    matcher = _matcher(tuple(patterns))
    parts = _check_rel_path(rel_path)
    info: tuple[bool, ...] = ()
    for depth in range(1, len(parts)):
        directory = "/".join(parts[:depth])
        excluded, info = matcher.matches(directory, info)
        if excluded and matcher.prunes(directory):
            return False
    excluded, _ = matcher.matches("/".join(parts), info)
    return not excluded


def copy_filtered(src: Path, dst: Path, patterns: list[str]) -> None:
    """Copy `src` to `dst` as the engine uploads it with exclude `patterns`.

    Directories, regular files (with their modes and times) and symlinks (as links: never followed, so
    nothing outside `src` is read); other file types are skipped. `dst` must not exist or be empty.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir() or src.is_symlink():
        raise ValueError(f"copy_filtered needs a directory to upload: {src} is not one; pass the source root")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"copy_filtered writes into a new or empty directory: {dst} is not; remove it first")
    dst.mkdir(parents=True, exist_ok=True)
    modes: list[tuple[Path, os.stat_result]] = []
    for rel, entry in walk_filtered(src, patterns):
        if entry is None:
            (dst / rel).mkdir()
            modes.append((dst / rel, os.lstat(src / rel)))
        else:
            _copy_entry(src / rel, dst / rel, entry)
    for path, st in reversed(modes):  # deepest first, after their contents are written
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.copystat(src, dst)


def walk_filtered(src: Path, patterns: list[str]) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
    """What an upload of `src` with exclude `patterns` holds, in name order: (rel, None) for each directory
    (excluded parents of an included path come along, each once) and (rel, entry) for everything else."""
    yield from _walk(Path(src), "", (), [], _matcher(tuple(patterns)), set())


def signature(src: Path, patterns: list[str]) -> str:
    """A digest of what `copy_filtered` would copy: names, types, modes, sizes and modification times (no
    contents read), so an unchanged tree is recognised without copying it."""
    h = hashlib.sha256()
    for rel, entry in walk_filtered(src, patterns):
        if entry is None:
            h.update(f"d {rel}\0".encode())
        else:
            st = entry.stat(follow_symlinks=False)
            h.update(f"f {rel} {st.st_mode:o} {st.st_size} {st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _walk(
    src: Path, rel: str, info: tuple[bool, ...], pending: list[str], matcher: Matcher, made: set[str]
) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
    """Walk one directory in name order; `pending` are excluded parents created only when needed."""
    with os.scandir(src / rel if rel else src) as entries:
        names = sorted(entries, key=lambda e: e.name)
    for entry in names:
        path = f"{rel}/{entry.name}" if rel else entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        excluded, child_info = matcher.matches(path, info)
        if excluded:
            if is_dir and not matcher.prunes(path):
                yield from _walk(src, path, child_info, [*pending, path], matcher, made)
            continue
        for parent in pending:  # an included path brings its excluded parents along
            if parent not in made:
                made.add(parent)
                yield parent, None
        pending = []
        if is_dir:
            if path not in made:
                made.add(path)
                yield path, None
            yield from _walk(src, path, child_info, [], matcher, made)
        else:
            yield path, entry


def _copy_entry(source: Path, target: Path, entry: os.DirEntry[str]) -> None:
    """Copy a symlink as a link and a regular file with its mode and times; skip other types."""
    if entry.is_symlink():
        os.symlink(os.readlink(source), target)
    elif entry.is_file(follow_symlinks=False):
        shutil.copy2(source, target, follow_symlinks=False)
