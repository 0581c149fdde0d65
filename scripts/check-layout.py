#!/usr/bin/env python3
"""Checks the architecture rules of ARCHITECTURE.md ("Crate boundaries") on the real code.

1. Crate dependencies, from `cargo metadata` (normal dependencies, resolved features):
   - `api` never depends on `gateway`, directly or through another crate;
   - `gateway` and `alerting` never depend on each other;
   - the product (`sentinella` without features) links no simulator and no MQTT client;
   - `store` is the only crate that depends on sqlx.
2. One composition root: only `sentinella/src/node.rs` calls `gateway::start` or builds an
   `alerting::Engine` for a running system (the alert benchmarks in `simulators` drive the
   engine alone, without a gateway, and are allowed).
3. No import circle among the modules of any crate: an edge a -> b for every `crate::b` or
   `super::b` path written in module a (top-level modules, tests excluded); the strongly
   connected components of that graph must all be single modules.

Exits non-zero, naming every violation.
"""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
problems = []


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def normal_graph(meta):
    names = {p["id"]: p["name"] for p in meta["packages"]}
    graph = {}
    for node in meta["resolve"]["nodes"]:
        deps = set()
        for d in node["deps"]:
            if any(k["kind"] is None for k in d["dep_kinds"]):
                deps.add(names[d["pkg"]])
        graph[names[node["id"]]] = deps
    return graph


def closure(graph, start):
    seen, todo = set(), [start]
    while todo:
        for d in graph.get(todo.pop(), ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def check_crates():
    graph = normal_graph(metadata())
    if "gateway" in closure(graph, "api"):
        problems.append("api depends on gateway (it must learn of the device side only through AppState)")
    if "alerting" in closure(graph, "gateway"):
        problems.append("gateway depends on alerting")
    if "gateway" in closure(graph, "alerting"):
        problems.append("alerting depends on gateway")
    # The product's graph without features: `cargo tree` resolves it for the binary alone (the
    # workspace-wide resolve of `cargo metadata` unifies the tests' features in).
    tree = subprocess.run(
        ["cargo", "tree", "-p", "sentinella", "-e", "normal", "--locked", "--prefix", "none"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    for crate in ("simulators", "rumqttc", "e2e"):
        if re.search(rf"^{crate} v", tree, re.M):
            problems.append(f"the product (sentinella without features) links {crate}")
    sql = sorted(n for n, deps in graph.items() if "sqlx" in deps and n != "store")
    if sql:
        problems.append(f"crates other than store depend on sqlx: {sql}")


def rust_files(directory):
    for base, _dirs, files in os.walk(directory):
        for f in files:
            if f.endswith(".rs"):
                yield os.path.join(base, f)


def check_composition():
    allowed = {os.path.join("sentinella", "src", "node.rs")}
    pattern = re.compile(r"\bgateway::start\s*\(")
    for crate_dir in [d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "Cargo.toml"))] + ["firmware"]:
        for path in rust_files(os.path.join(ROOT, crate_dir)):
            rel = os.path.relpath(path, ROOT)
            if "/target" in rel or rel.startswith("target"):
                continue
            text = open(path, encoding="utf-8").read()
            if pattern.search(text) and rel not in allowed:
                problems.append(f"{rel} calls gateway::start: compose through sentinella::Node::start")


def module_of(src, path):
    rel = os.path.relpath(path, src)
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def strip_tests(text):
    """Drops `#[cfg(test)] mod tests { ... }` blocks (tests may reach anywhere)."""
    out, i = [], 0
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*mod \w+\s*\{", text[i:])
        if not m:
            out.append(text[i:])
            return "".join(out)
        start = i + m.start()
        out.append(text[i:start])
        depth, j = 0, i + m.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1


def is_module(directory, name):
    return os.path.exists(os.path.join(directory, name + ".rs")) or os.path.isdir(
        os.path.join(directory, name)
    )


def check_module_cycles(crate):
    src = os.path.join(ROOT, crate, "src")
    if not os.path.isdir(src):
        return
    edges = {}
    for path in rust_files(src):
        mod = module_of(src, path)
        if not mod:
            continue  # the crate root only declares and re-exports
        top = mod[0]
        text = strip_tests(open(path, encoding="utf-8").read())
        text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))
        targets = set(re.findall(r"\bcrate::(\w+)", text))
        # `super::x` from a top-level module's file names a sibling x; deeper, it stays inside.
        if len(mod) == 1:
            targets |= set(re.findall(r"\bsuper::(\w+)", text))
        # `use super::{a, b}` and `use crate::{a, b}` groups.
        for group in re.findall(r"\b(?:crate|super)::\{([^}]*)\}", text):
            targets |= {t.strip().split("::")[0] for t in group.split(",") if t.strip()}
        for t in targets:
            if t != top and is_module(src, t):
                edges.setdefault(top, set()).add(t)
        # Inside a directory module: edges among its own submodules (`super::x` one level down).
        if len(mod) == 2:
            for t in set(re.findall(r"\bsuper::(\w+)", text)) | {
                g.strip().split("::")[0]
                for grp in re.findall(r"\bsuper::\{([^}]*)\}", text)
                for g in grp.split(",") if g.strip()
            }:
                if t != mod[1] and is_module(os.path.join(src, mod[0]), t):
                    edges.setdefault(f"{mod[0]}::{mod[1]}", set()).add(f"{mod[0]}::{t}")
    for comp in sccs(edges):
        if len(comp) > 1:
            problems.append(f"{crate}: import circle among modules {sorted(comp)}")


def sccs(edges):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    nodes = set(edges) | {t for ts in edges.values() for t in ts}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    check_crates()
    check_composition()
    for crate in ["protocol", "telemetry", "store", "alerting", "gateway", "api", "sentinella", "pki", "simulators", "tests"]:
        check_module_cycles(crate)
    if problems:
        for p in problems:
            print(f"layout: {p}", file=sys.stderr)
        sys.exit(1)
    print("layout: crate boundaries, one composition root, no import circles: ok")


if __name__ == "__main__":
    main()
