"""The executor's exclude patterns for host uploads follow the engine's (pure and fast; not `executor`).

Engine files followed (dagger v0.21.8): internal/fsutil/filter.go (the walk and its pruning),
core/schema/host.go (how `host.directory(exclude:)` cleans the list), core/modfunc.go loadContextualArg and
core/modulesource.go LoadContextDir (an argument's Ignore goes to host.directory). The matcher is
github.com/moby/patternmatcher v0.6.1 (dagger's go.mod; not vendored; the source is in the mirror at
/work/.mirror/moby+patternmatcher, tag v0.6.1). MATCHES, MULTI, FILEPATH_MATCH and COMPILE are copied from
its patternmatcher_test.go (TestMatches, matchTests, compileTests), checked the way its
"MatchesUsingParentResults" subtest checks them: parent directories first, their results passed down.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.dagger.executor.patterns import (
    BadPattern,
    Matcher,
    compile_pattern,
    copy_filtered,
    go_dir,
    host_excludes,
    included,
)

# TestMatches `tests` (pattern, text, excluded); the Windows-only skip is for "a\\*b", which runs on Linux.
MATCHES = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        True,
    ),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
]

# TestMatches `multiPatternTests`
MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (
        ["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        False,
    ),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    # the single-test functions at the top of the file
    (["*"], "fileutils.go", True),
    (["*.go"], "fileutils.go", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["docs", "  !docs/README.md"], "docs/README.md", False),  # leading space trimmed
    (["docs", "!docs/README.md  "], "docs/README.md", False),  # trailing space trimmed
    ([], "any/path/there", False),
]

# matchTests, "stolen from go's filepath Match tests": (pattern, text, excluded, bad pattern)
FILEPATH_MATCH = [
    ("abc", "abc", True, False),
    ("*", "abc", True, False),
    ("*c", "abc", True, False),
    ("a*", "a", True, False),
    ("a*", "abc", True, False),
    ("a*", "ab/c", True, False),
    ("a*/b", "abc/b", True, False),
    ("a*/b", "a/c/b", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True, False),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False, False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False, False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True, False),
    ("a*b?c*x", "abxbbxdbxebxczzy", False, False),
    ("ab[c]", "abc", True, False),
    ("ab[b-d]", "abc", True, False),
    ("ab[e-g]", "abc", False, False),
    ("ab[^c]", "abc", False, False),
    ("ab[^b-d]", "abc", False, False),
    ("ab[^e-g]", "abc", True, False),
    ("a\\*b", "a*b", True, False),
    ("a\\*b", "ab", False, False),
    ("a?b", "a☺b", True, False),
    ("a[^a]b", "a☺b", True, False),
    ("a???b", "a☺b", False, False),
    ("a[^a][^a][^a]b", "a☺b", False, False),
    ("[a-ζ]*", "α", True, False),
    ("*[a-ζ]", "A", False, False),
    ("a?b", "a/b", False, False),
    ("a*b", "a/b", False, False),
    ("[\\]a]", "]", True, False),
    ("[\\-]", "-", True, False),
    ("[x\\-]", "x", True, False),
    ("[x\\-]", "-", True, False),
    ("[x\\-]", "z", False, False),
    ("[\\-x]", "x", True, False),
    ("[\\-x]", "-", True, False),
    ("[\\-x]", "a", False, False),
    ("[]a]", "]", False, True),
    ("[-]", "-", False, True),
    ("[x-]", "x", False, True),
    ("[x-]", "-", False, True),
    ("[x-]", "z", False, True),
    ("[-x]", "x", False, True),
    ("[-x]", "-", False, True),
    ("[-x]", "a", False, True),
    ("\\", "a", False, True),
    ("[a-b-c]", "a", False, True),
    ("[", "a", False, True),
    ("[^", "a", False, True),
    ("[^bc", "a", False, True),
    ("a[", "a", False, True),
    ("a[", "ab", False, True),
    ("*x", "xxx", True, False),
]

# compileTests on "/": (pattern, kind, Go regexp)
COMPILE = [
    ("*", "regexp", r"^[^/]*$"),
    ("file*", "regexp", r"^file[^/]*$"),
    ("*file", "regexp", r"^[^/]*file$"),
    ("a*/b", "regexp", r"^a[^/]*/b$"),
    ("**", "suffix", ""),
    ("**/**", "regexp", r"^(.*/)?.*$"),
    ("dir/**", "prefix", ""),
    ("**/dir", "suffix", ""),
    ("**/dir2/*", "regexp", r"^(.*/)?dir2/[^/]*$"),
    ("**/dir2/**", "regexp", r"^(.*/)?dir2/.*$"),
    ("**file", "suffix", ""),
    ("**/file*txt", "regexp", r"^(.*/)?file[^/]*txt$"),
    ("**/**/*.txt", "regexp", r"^(.*/)?(.*/)?[^/]*\.txt$"),
    ("a[b-d]e", "regexp", r"^a[b-d]e$"),
    (".*", "regexp", r"^\.[^/]*$"),
    ("abc.def", "exact", ""),
    ("abc?def", "regexp", r"^abc[^/]def$"),
    ("**/foo/bar", "suffix", ""),
    ("a(b)c/def", "exact", ""),
    ("a.|)$(}+{bc", "exact", ""),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", "exact", ""),
]


def walk_match(patterns: list[str], text: str) -> bool:
    """patternmatcher_test.go's check(): match each parent directory first, pass its results down."""
    matcher = Matcher.of(patterns)
    parent = go_dir(text)
    info: tuple[bool, ...] = ()
    if parent != ".":
        dirs = parent.split("/")
        for i in range(len(dirs)):
            _, info = matcher.matches("/".join(dirs[: i + 1]), info)
    return matcher.matches(text, info)[0]


@pytest.mark.parametrize(("pattern", "text", "excluded"), MATCHES)
def test_patternmatcher_matches(pattern, text, excluded):
    assert walk_match([pattern], text) is excluded
    assert Matcher.of([pattern]).matches(text)[0] is excluded  # "MatchesUsingParentResultsNoContext"


@pytest.mark.parametrize(("patterns", "text", "excluded"), MULTI)
def test_patternmatcher_multi_pattern(patterns, text, excluded):
    assert walk_match(patterns, text) is excluded


@pytest.mark.parametrize(("pattern", "text", "excluded", "bad"), FILEPATH_MATCH)
def test_filepath_match_cases(pattern, text, excluded, bad):
    if bad:
        with pytest.raises(BadPattern, match="syntax error in pattern"):
            Matcher.of([pattern])
    else:
        assert walk_match([pattern], text) is excluded


@pytest.mark.parametrize(("pattern", "kind", "regexp"), COMPILE)
def test_compile_gives_the_match_kind_and_regexp(pattern, kind, regexp):
    compiled = compile_pattern(pattern)
    assert compiled is not None and compiled.kind == kind
    if kind == "regexp":
        assert compiled.regexp is not None
        assert compiled.regexp.pattern == regexp.removesuffix("$") + r"\Z"


def test_patternmatcher_new_drops_blank_patterns_and_refuses_a_lone_exclamation():
    assert len(Matcher.of(["docs", "config", "", "   "]).patterns) == 2
    assert [p.exclusion for p in Matcher.of(["docs", "  !docs/README.md"]).patterns] == [False, True]
    with pytest.raises(BadPattern, match='illegal exclusion pattern: "!"'):
        Matcher.of(["!"])


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        (["/abs", "../up", "", "a/../../b"], []),  # not filepath.IsLocal: silently dropped
        (["./a/", "a//b", "!./keep/"], ["a", "a/b", "!keep"]),  # joined to "." and cleaned
        (["."], ["*"]),  # the directory itself means every top-level entry
        (["!"], []),  # host.go strips "!" first, then "" is not local: no error on this path
        (["**/.venv", "!x/**"], ["**/.venv", "!x/**"]),
    ],
)
def test_host_directory_cleans_the_exclude_list(given, sent):
    assert host_excludes(given) == sent


def test_an_absolute_pattern_excludes_nothing():
    """A leading "/" does not anchor: host.go drops the pattern (relative patterns are anchored already)."""
    assert included(".venv/bin/python", ["/.venv"])
    assert not included(".venv/bin/python", [".venv"])


def test_dot_venv_excludes_only_the_top_level_one():
    """The module's defect: Ignore([".venv"]) still uploads every nested .venv (e.g. an example's)."""
    assert not included(".venv/lib/site.py", [".venv"])
    assert included("examples/breast_cancer/.venv/lib/site.py", [".venv"])
    assert not included("examples/breast_cancer/.venv/lib/site.py", ["**/.venv"])
    assert not included(".venv/lib/site.py", ["**/.venv"])
    assert included("examples/breast_cancer/venv.py", ["**/.venv"])  # a component, not a suffix of a name


def test_everything_but_pyproject():
    patterns = ["**", "!pyproject.toml"]
    assert included("pyproject.toml", patterns)
    assert not included("README.md", patterns)
    assert not included("sub/pyproject.toml", patterns)  # anchored at the root


def test_an_exception_re_includes_a_tree_and_a_later_pattern_excludes_again():
    patterns = ["**", "!pyproject.toml", "!mlci/**", "**/__pycache__"]
    assert included("mlci/cli.py", patterns)
    assert included("mlci/registry/store.py", patterns)
    assert not included("mlci/__pycache__/cli.cpython-311.pyc", patterns)
    assert not included("tests/test_cli.py", patterns)
    assert not included("mlcix/a.py", patterns)


def test_an_excluded_directory_excludes_its_contents_except_the_exceptions():
    patterns = ["docs", "!docs/README.md"]
    assert included("docs/README.md", patterns)
    assert not included("docs/guide.md", patterns)
    assert not included("docs/sub/README.md", patterns)
    assert not included("docs", ["docs/"])  # the trailing slash is cleaned away: a file "docs" too


def test_last_matching_pattern_wins():
    assert included("a.log", ["*.log", "!a.log"])
    assert not included("a.log", ["!a.log", "*.log"])


@pytest.mark.parametrize("bad", ["/abs/path", "", ".", "../up", "a/../../b"])
def test_included_wants_a_relative_path(bad):
    with pytest.raises(ValueError, match="expected a path relative to the uploaded directory"):
        included(bad, ["x"])


def tree(root: Path) -> set[str]:
    """Every path under root, relative, directories marked with a trailing "/"."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        out |= {f"{rel / d}/".removeprefix("./") for d in dirnames}
        out |= {str(rel / f).removeprefix("./") for f in filenames}
    return out


def make_source(root: Path, files: list[str]) -> Path:
    """A source tree with the given files (each holding its own path)."""
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    return root


def test_copy_filtered_uploads_what_the_module_list_keeps(tmp_path):
    src = make_source(
        tmp_path / "src",
        ["pyproject.toml", "README.md", "mlci/cli.py", "mlci/__pycache__/cli.pyc", "tests/t.py", "docs/x.md"],
    )
    copy_filtered(
        src, tmp_path / "dst", ["**", "!pyproject.toml", "!README.md", "!mlci/**", "**/__pycache__"]
    )
    # "mlci" is itself excluded ("mlci/**" does not match "mlci"), but comes along with its contents
    assert tree(tmp_path / "dst") == {"pyproject.toml", "README.md", "mlci/", "mlci/cli.py"}


def test_copy_filtered_prunes_excluded_directories_and_keeps_empty_included_ones(tmp_path):
    src = make_source(tmp_path / "src", ["build/keep.txt", "build/drop.txt", "cache/a/b.txt", "app.py"])
    (src / "empty").mkdir()
    copy_filtered(src, tmp_path / "dst", ["build", "!build/keep.txt", "cache"])
    assert tree(tmp_path / "dst") == {"app.py", "build/", "build/keep.txt", "empty/"}


def test_copy_filtered_with_glob_exceptions_descends_into_excluded_directories(tmp_path):
    src = make_source(tmp_path / "src", ["a/x/keep.txt", "a/x/drop.txt", "b/keep.txt", "c.txt"])
    copy_filtered(src, tmp_path / "dst", ["*", "!**/keep.txt"])
    assert tree(tmp_path / "dst") == {"a/", "a/x/", "a/x/keep.txt", "b/", "b/keep.txt"}


def test_copy_filtered_preserves_modes_and_copies_symlinks_without_following_them(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not for upload")
    src = make_source(tmp_path / "src", ["bin/run.sh", "data/x.csv"])
    (src / "bin/run.sh").chmod(0o751)
    (src / "data").chmod(0o700)
    (src / "link-out").symlink_to(outside)
    (src / "link-file").symlink_to(outside / "secret")
    (src / "rel").symlink_to("bin/run.sh")
    dst = tmp_path / "dst"
    copy_filtered(src, dst, [])
    assert stat.S_IMODE((dst / "bin/run.sh").stat().st_mode) == 0o751
    assert stat.S_IMODE((dst / "data").stat().st_mode) == 0o700
    assert (dst / "data/x.csv").read_text() == "data/x.csv"
    for name, target in (
        ("link-out", str(outside)),
        ("link-file", str(outside / "secret")),
        ("rel", "bin/run.sh"),
    ):
        assert (dst / name).is_symlink() and os.readlink(dst / name) == target
    assert not any(p.name == "secret" and not p.is_symlink() for p in dst.rglob("*"))


def test_copy_filtered_refuses_bad_arguments(tmp_path):
    src = make_source(tmp_path / "src", ["a.txt"])
    with pytest.raises(ValueError, match="needs a directory to upload"):
        copy_filtered(src / "a.txt", tmp_path / "d1", [])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="new or empty directory"):
        copy_filtered(src, tmp_path / "full", [])
    with pytest.raises(BadPattern, match="syntax error"):
        copy_filtered(src, tmp_path / "d2", ["[x-]"])


def test_a_parent_exception_does_not_undo_a_more_specific_exclusion_during_the_walk():
    """filter.go walks with MatchesUsingParentResults: "!a" was skipped for "a" (nothing to undo there),
    so it is not inherited by "a/b"; MatchesOrParentMatches (no parent results) would keep a/b."""
    assert not included("a/b", ["a/b", "!a"])
    assert Matcher.of(["a/b", "!a"]).matches("a/b")[0] is False  # the context-free answer differs


def test_copy_filtered_never_lists_a_pruned_directory(tmp_path, monkeypatch):
    src = make_source(tmp_path / "src", [".venv/lib/x.py", "pkg/.venv/lib/y.py", "build/k/keep", "app.py"])
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).is_relative_to(src):
            listed.append(Path(path).relative_to(src).as_posix())
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    copy_filtered(src, tmp_path / "dst", ["**/.venv"])
    assert ".venv" not in listed and "pkg/.venv" not in listed and "pkg" in listed
    listed.clear()
    copy_filtered(src, tmp_path / "dst2", ["build", "!**/keep"])  # a glob exception: must look inside
    assert "build" in listed and "build/k" in listed
    assert tree(tmp_path / "dst2") >= {"build/", "build/k/", "build/k/keep"}
