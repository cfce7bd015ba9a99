"""Understanding an MLC-style model file: which class to patch and how it computes hidden states.

The facts the generator needs are read from the code itself, never from fixed text anchors:
- the class whose `get_default_spec` lists `prefill` and `decode` (own or inherited);
- in `prefill`/`decode`, the statement that runs the decoder stack over the input embeddings and the
  KV cache (e.g. `hidden_states = self.model(input_embed, paged_kv_cache)`), what must run before it
  (`op_ext.configure()`, tensor-parallel broadcasts) and what `decode` does to the result before the
  LM head (MiniCPM divides by a width scale, for instance);
- the `prefill`/`decode` entries of the spec dict, which the new entries copy to match their format.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from mlcpatch.patcher.errors import PatchError
from mlcpatch.patcher.modules import ClassRef, ModuleGraph
from mlcpatch.patcher.source import SourceFile

NEW_PREFILL = "get_last_hidden"
NEW_DECODE = "decode_last_hidden"
# MLC's Llama family already exposes these; when present the new functions delegate to them.
EXISTING_PREFILL = "prefill_to_last_hidden_states"
EXISTING_DECODE = "decode_to_last_hidden_states"


@dataclass
class HiddenPath:
    """How one method (prefill or decode) computes the decoder stack's output."""

    owner: ClassRef
    method: ast.FunctionDef
    params: list[str]
    embed: str
    kv_cache: str
    hidden_var: str
    preamble: list[ast.stmt]  # statements before the stack call that must run too
    stack_call: ast.stmt
    post: list[ast.stmt]  # statements between the stack call and the LM head
    returned_rest: list[ast.expr]  # what the method returns after the logits (the KV cache)


@dataclass
class SpecSite:
    """Where the spec dict's `prefill`/`decode` entries live."""

    owner: ClassRef
    method: ast.FunctionDef
    mapping: ast.Dict
    entries: dict[str, tuple[ast.expr, ast.expr]]  # key -> (key node, value node)
    variable: str | None  # name the dict is assigned to, if any
    assign: ast.stmt | None


@dataclass
class ModelAnalysis:
    graph: ModuleGraph
    target: ClassRef
    prefill: HiddenPath
    decode: HiddenPath
    spec: SpecSite
    delegate: bool  # use existing *_to_last_hidden_states
    notes: list[str] = field(default_factory=list)

    @property
    def spec_is_inherited(self) -> bool:
        return self.spec.owner.node is not self.target.node


def _spec_dict(site: ClassRef, fn: ast.FunctionDef) -> SpecSite | None:
    for stmt in ast.walk(fn):
        if not isinstance(stmt, ast.Dict):
            continue
        keys = {
            k.value: (k, v)
            for k, v in zip(stmt.keys, stmt.values, strict=True)
            if isinstance(k, ast.Constant) and isinstance(k.value, str)
        }
        if "prefill" in keys or "decode" in keys:
            variable, assign = None, None
            for top in fn.body:
                if isinstance(top, ast.Assign) and top.value is stmt and len(top.targets) == 1:
                    if isinstance(top.targets[0], ast.Name):
                        variable, assign = top.targets[0].id, top
            return SpecSite(site, fn, stmt, keys, variable, assign)
    return None


def spec_keys(graph: ModuleGraph, cls: ClassRef, depth: int = 0) -> set[str]:
    """Function names a class's get_default_spec lists: the dict literal's keys, keys set by
    subscript (`spec["x"] = ...`), and the parent's keys when it calls super()."""
    found = graph.find_method(cls, "get_default_spec")
    if found is None or depth > 8:
        return set()
    owner, fn = found
    site = _spec_dict(owner, fn)
    keys = set(site.entries) if site else set()
    calls_super = False
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                    if isinstance(target.slice.value, str):
                        keys.add(target.slice.value)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "super().get_default_spec":
            calls_super = True
    if calls_super:
        for base in owner.node.bases:
            keys |= spec_keys(graph, graph.resolve_class(owner.source, base), depth + 1)
    return keys


def choose_class(graph: ModuleGraph, class_name: str | None) -> ClassRef:
    """The class to patch: named, or the outermost one whose spec lists prefill and decode."""
    source = graph.entry
    classes = [ClassRef(source, n) for n in source.tree.body if isinstance(n, ast.ClassDef)]
    if class_name is not None:
        for cls in classes:
            if cls.node.name == class_name:
                return cls
        names = ", ".join(c.node.name for c in classes) or "none"
        raise PatchError(f"{source.path}: no class {class_name} (classes here: {names})")
    candidates: list[ClassRef] = []
    problems: list[str] = []
    for cls in classes:
        if cls.node.name.endswith("Config"):  # configs inherit from helpers we need not follow
            continue
        try:
            if graph.find_method(cls, "get_default_spec") is None:
                continue
            if {"prefill", "decode"} <= spec_keys(graph, cls):
                candidates.append(cls)
        except PatchError as err:
            problems.append(str(err))
    if len(candidates) > 1:
        # Gemma3-style files hold the inner language model too; keep the classes no other
        # candidate instantiates.
        made = {
            n.func.id
            for c in candidates
            for n in ast.walk(c.node)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        outer = [c for c in candidates if c.node.name not in made]
        candidates = outer or candidates
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        owners = [c.node.name for c in classes if c.method("get_default_spec") is not None]
        if owners:
            raise PatchError(
                f"{source.path}: get_default_spec() of {', '.join(owners)} lists no 'prefill' "
                "and 'decode' entries (not a paged-KV-cache decoder model)"
            )
        if problems:  # e.g. the spec is inherited from a module we could not follow
            raise PatchError(problems[0])
        raise PatchError(f"{source.path}: no class defines get_default_spec()")
    names = ", ".join(c.node.name for c in candidates)
    raise PatchError(f"{source.path}: several model classes ({names}); choose one with --class")


def _loaded_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _assigned_names(stmt: ast.stmt) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _kv_param(params: list[str], fn: ast.FunctionDef) -> str:
    for arg in fn.args.args[1:]:
        note = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        if "KVCache" in note or "kv_cache" in arg.arg or "cache" in arg.arg:
            return arg.arg
    return params[-1]


def hidden_path(graph: ModuleGraph, cls: ClassRef, name: str) -> HiddenPath:
    found = graph.find_method(cls, name)
    if found is None:
        raise PatchError(f"{cls.source.path}: class {cls.node.name} has no {name}() method")
    owner, fn = found
    where = f"{owner.source.path.name}:{fn.lineno}"
    params = [a.arg for a in fn.args.args[1:]]
    if fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or len(params) < 2:
        raise PatchError(f"{where}: {name}() should take (input_embed, kv_cache); it does not")
    embed, kv = params[0], _kv_param(params, fn)
    body = [
        s
        for s in fn.body
        if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))  # docstring
    ]
    stack_index = None
    for index, stmt in enumerate(body):
        loaded = _loaded_names(stmt)
        if embed in loaded and kv in loaded:
            stack_index = index
            break
        if embed in loaded and isinstance(stmt, ast.Return):
            break
    if stack_index is None:
        raise PatchError(
            f"{where}: {name}() never runs the decoder stack on ({embed}, {kv}) in a separate "
            "statement, so its hidden states cannot be taken"
        )
    stack = body[stack_index]
    if isinstance(stack, ast.Return):
        raise PatchError(
            f"{where}: {name}() returns `{ast.unparse(stack.value)[:60]}` directly; "
            "there is no hidden-state value to expose"
        )
    if not isinstance(stack, ast.Assign | ast.AnnAssign):
        raise PatchError(f"{where}: the decoder-stack call in {name}() is not an assignment")
    target = stack.targets[0] if isinstance(stack, ast.Assign) else stack.target
    if isinstance(target, ast.Tuple) and target.elts and isinstance(target.elts[0], ast.Name):
        hidden_var = target.elts[0].id
    elif isinstance(target, ast.Name):
        hidden_var = target.id
    else:
        raise PatchError(f"{where}: cannot tell which variable holds the hidden states")
    ret = body[-1]
    if not isinstance(ret, ast.Return) or ret.value is None:
        raise PatchError(f"{where}: {name}() does not end with a return statement")
    returned = ret.value.elts if isinstance(ret.value, ast.Tuple) else [ret.value]
    first = returned[0]
    logits_var = first.id if isinstance(first, ast.Name) else None
    # The LM head is the first later statement that produces what is returned first (the logits),
    # or the return itself. Everything between the stack call and it shapes the hidden states.
    post: list[ast.stmt] = []
    for stmt in body[stack_index + 1 : -1]:
        if logits_var is not None and logits_var in _assigned_names(stmt):
            break
        post.append(stmt)
    used_defs: set[str] = set()
    for stmt in [stack, *post]:
        if not _is_index_stmt(stmt, hidden_var):  # prefill's own indexing is never copied
            used_defs |= _loaded_names(stmt)
    preamble = [
        s
        for s in body[:stack_index]
        if not isinstance(s, ast.FunctionDef | ast.ClassDef) or s.name in used_defs
    ]
    return HiddenPath(
        owner, fn, params, embed, kv, hidden_var, preamble, stack, post, list(returned[1:])
    )


def _is_index_stmt(stmt: ast.stmt, hidden_var: str) -> bool:
    """`hidden = index_last_token(hidden)`-like statements that keep only the last position."""
    if not isinstance(stmt, ast.Assign) or hidden_var not in _assigned_names(stmt):
        return False
    text = ast.unparse(stmt.value)
    return any(word in text for word in ("index", "take", "[:, -1", "last_token"))


def analyze(graph: ModuleGraph, class_name: str | None = None) -> ModelAnalysis:
    target = choose_class(graph, class_name)
    spec_found = graph.find_method(target, "get_default_spec")
    if spec_found is None:
        raise PatchError(f"{graph.entry.path}: {target.node.name} has no get_default_spec()")
    spec = _spec_dict(*spec_found)
    if spec is None or "prefill" not in spec.entries or "decode" not in spec.entries:
        owner, fn = spec_found
        raise PatchError(
            f"{owner.source.path.name}:{fn.lineno}: get_default_spec() has no dict literal "
            "with 'prefill' and 'decode' entries"
        )
    prefill = hidden_path(graph, target, "prefill")
    decode = hidden_path(graph, target, "decode")
    if any(_is_index_stmt(s, decode.hidden_var) for s in decode.post):
        raise PatchError(
            f"{decode.owner.source.path.name}:{decode.method.lineno}: decode() selects positions "
            "before its LM head; cannot tell hidden-state shaping from indexing"
        )
    delegate = (
        graph.find_method(target, EXISTING_PREFILL) is not None
        and graph.find_method(target, EXISTING_DECODE) is not None
    )
    return ModelAnalysis(graph, target, prefill, decode, spec, delegate)


def _fn_params(fn: ast.FunctionDef) -> list[str]:
    return [a.arg for a in fn.args.args[1:]]


def patched_problems(graph: ModuleGraph, target: ClassRef) -> list[str]:
    """What is missing or wrong in a patched class; empty when the patch is complete."""
    problems: list[str] = []
    keys = spec_keys(graph, target)
    for new, base in ((NEW_PREFILL, "prefill"), (NEW_DECODE, "decode")):
        found = graph.find_method(target, new)
        base_found = graph.find_method(target, base)
        if found is None:
            problems.append(f"method {new}() missing")
        elif base_found is not None and _fn_params(found[1]) != _fn_params(base_found[1]):
            problems.append(f"{new}() parameters differ from {base}()")
        if new not in keys:
            problems.append(f"spec entry '{new}' missing")
    return problems


__all__ = [
    "EXISTING_DECODE",
    "EXISTING_PREFILL",
    "NEW_DECODE",
    "NEW_PREFILL",
    "HiddenPath",
    "ModelAnalysis",
    "SourceFile",
    "SpecSite",
    "analyze",
    "patched_problems",
]
