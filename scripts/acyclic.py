#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a loop.

    python3 scripts/acyclic.py broker/src [more crate src dirs ...]

For each crate source directory, builds the graph of its top-level modules
(`foo.rs` or `foo/`): an edge a -> b for every `crate::b` path in a's code
(comments and `#[cfg(test)] mod tests` blocks left out; `use crate::{b, c}`
groups included). The crate root (lib.rs, main.rs) is the assembly and is
left out. Prints every loop (strongly connected component of more than one
module) with one file:line per edge in it, and exits 1 if there is any.
ARCHITECTURE.md's layer diagram is what this enforces: each module only
reaches the ones below it. (A text scan, not rustc: a path built by a macro
is missed, which is why the check errs on the side of listing edges.)
"""
import os
import re
import sys

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\}", re.S)
GROUP_ITEM = re.compile(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)\s*(?=::|,|\}|$)")


def strip(text):
    """Code only: no comments, no string contents, no trailing unit tests."""
    text = re.sub(r"#\[cfg\(test\)\]\s*mod\s+tests\s*\{.*", "", text, flags=re.S)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def graph(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            top = os.path.relpath(path, src)[:-3].split(os.sep)[0]
            if top in ("lib", "main"):
                continue
            mods.setdefault(top, []).append(path)
    edges = {m: {} for m in mods}  # a -> {b: "file:line"}
    for m, paths in mods.items():
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                code = strip(fh.read())
            hits = [(t.group(1), t.start()) for t in PATH.finditer(code)]
            for g in GROUP.finditer(code):
                hits += [(t.group(1), g.start()) for t in GROUP_ITEM.finditer(g.group(1))]
            for target, pos in hits:
                if target in mods and target != m and target not in edges[m]:
                    line = code.count("\n", 0, pos) + 1
                    edges[m][target] = f"{path}:{line}"
    return edges


def loops(edges):
    """Tarjan's strongly connected components of more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main(dirs):
    if not dirs:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    bad = 0
    for src in dirs:
        edges = graph(src)
        found = loops(edges)
        for comp in found:
            bad += 1
            print(f"{src}: import loop between {', '.join(comp)}:")
            for a in comp:
                for b, where in sorted(edges[a].items()):
                    if b in comp:
                        print(f"  {a} -> {b}  ({where})")
        if not found:
            print(f"{src}: {len(edges)} modules, no import loop")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
