"""Writing the new code: two methods, two spec entries, and any imports they need.

All output is whole lines inserted between existing lines, so every original line survives
byte for byte and removing the marked blocks gives back the original file exactly.
"""

from __future__ import annotations

import ast
import builtins
import textwrap
from dataclasses import dataclass

from mlcpatch.patcher.analyze import (
    EXISTING_DECODE,
    EXISTING_PREFILL,
    NEW_DECODE,
    NEW_PREFILL,
    HiddenPath,
    ModelAnalysis,
)
from mlcpatch.patcher.errors import PatchError
from mlcpatch.patcher.markers import make_block, short_hash
from mlcpatch.patcher.modules import ClassRef, PackageLayout, absolute_module, module_level_names
from mlcpatch.patcher.source import SourceFile, newline_of, split_lines

DOC_PREFILL = "Decoder output after the final norm at every position (no LM head)."
DOC_DECODE = "Decoder output after the final norm for one new position (no LM head)."


@dataclass
class Insertion:
    before: int  # 0-based line index the block goes in front of (len(lines) = at the end)
    name: str
    indent: str
    body: list[str]  # lines without endings


def _strip_end(line: str) -> str:
    return line.rstrip("\r\n")


def _reindent(lines: list[str], old: str, new: str) -> list[str]:
    out = []
    for line in lines:
        line = _strip_end(line)
        if not line.strip():
            out.append("")
        elif line.startswith(old):
            out.append(new + line[len(old) :])
        else:  # continuation lines that were less indented than the body: keep them as they were
            out.append(line)
    return out


def _body_indent(source: SourceFile, fn: ast.FunctionDef) -> str:
    return source.indent_of(fn.body[0].lineno)


def _class_body_indent(cls: ClassRef) -> str:
    return cls.source.indent_of(cls.node.body[0].lineno)


def _step(cls: ClassRef) -> str:
    """One indentation level as this file writes it."""
    outer = cls.source.indent_of(cls.node.lineno)
    inner = _class_body_indent(cls)
    return inner[len(outer) :] or "    "


def _signature(fn: ast.FunctionDef, name: str) -> str:
    return f"def {name}({ast.unparse(fn.args)}):"


def _copied_method(
    path: HiddenPath, post_from: HiddenPath, name: str, doc: str, indent: str, step: str
) -> list[str]:
    src = path.owner.source
    old = _body_indent(src, path.method)
    new = indent + step
    lines = [indent + _signature(path.method, name), f'{new}"""{doc}"""']
    for stmt in [*path.preamble, path.stack_call]:
        lines += _reindent(src.stmt_lines(stmt), old, new)
    if post_from.post:
        if post_from.hidden_var != path.hidden_var:
            raise PatchError(
                f"{src.path.name}:{path.method.lineno}: prefill and decode name their hidden "
                f"states differently ({path.hidden_var} vs {post_from.hidden_var})"
            )
        post_src = post_from.owner.source
        post_old = _body_indent(post_src, post_from.method)
        for stmt in post_from.post:
            lines += _reindent(post_src.stmt_lines(stmt), post_old, new)
    rest = [src.segment(e) for e in path.returned_rest]
    lines.append(f"{new}return {', '.join([path.hidden_var, *rest])}")
    return lines


def _delegating_method(
    path: HiddenPath, existing: str, name: str, indent: str, step: str
) -> list[str]:
    args = ", ".join(path.params)
    return [
        indent + _signature(path.method, name),
        f'{indent}{step}"""Same as {existing}()."""',
        f"{indent}{step}return self.{existing}({args})",
    ]


def _spec_value(analysis: ModelAnalysis, key: str, new_col: int) -> list[str]:
    """The source of the spec's `key` entry value, re-indented for a key written at new_col."""
    site = analysis.spec
    src = site.owner.source
    key_node, value = site.entries[key]
    old_col = len(src.line_prefix(key_node.lineno, key_node.col_offset))
    lines = src.segment(value).split("\n")
    delta = new_col - old_col
    out = [_strip_end(lines[0])]
    for line in lines[1:]:
        line = _strip_end(line)
        if delta >= 0:
            out.append(" " * delta + line if line.strip() else "")
        else:
            cut = min(-delta, len(line) - len(line.lstrip(" ")))
            out.append(line[cut:])
    return out


def _quote(analysis: ModelAnalysis) -> str:
    key_node = analysis.spec.entries["prefill"][0]
    return analysis.spec.owner.source.segment(key_node)[0]


def _entry_lines(analysis: ModelAnalysis, indent: str, subscript: str | None) -> list[str]:
    """Spec entries for both new functions; as dict entries, or as `var["k"] = v` statements."""
    q = _quote(analysis)
    lines: list[str] = []
    for new, base in ((NEW_PREFILL, "prefill"), (NEW_DECODE, "decode")):
        head = f"{subscript}[{q}{new}{q}] = " if subscript else f"{q}{new}{q}: "
        value = _spec_value(analysis, base, len(indent))
        value[0] = indent + head + value[0]
        if not subscript:
            value[-1] += ","
        lines += value
    return lines


def _spec_override(analysis: ModelAnalysis, indent: str, step: str) -> list[str]:
    """For a class that inherits get_default_spec: extend the parent's spec."""
    ret = analysis.spec.method.body[-1]
    if not (isinstance(ret, ast.Return) and isinstance(ret.value, ast.Call)):
        raise PatchError("the inherited get_default_spec() does not end in `return <call>`")
    builder = ast.unparse(ret.value.func)
    body = indent + step
    lines = [
        f"{indent}def get_default_spec(self):",
        f'{body}"""The parent\'s functions plus the two hidden-state functions."""',
        f"{body}parent = super().get_default_spec()",
        f"{body}mod_spec = dict(zip(parent.method_names, parent.method_specs))",
    ]
    lines += _entry_lines(analysis, body, "mod_spec")
    lines.append(f"{body}return {builder}(mod_spec, self)")
    return lines


def _method_insert_point(analysis: ModelAnalysis) -> tuple[int, bool]:
    """Line index to insert the methods at, and whether the block needs a leading blank line."""
    target, src = analysis.target, analysis.target.source
    body = target.node.body
    decode = analysis.decode
    if decode.owner.node is target.node:
        index = body.index(decode.method)
        if index + 1 < len(body):
            nxt = body[index + 1]
            first = min([nxt.lineno, *(d.lineno for d in getattr(nxt, "decorator_list", []))])
            # Keep comment lines that introduce the next method attached to it.
            while first - 1 > decode.method.end_lineno and src.lines[first - 2].strip().startswith(
                "#"
            ):
                first -= 1
            return first - 1, False
    last = body[-1]
    end = last.end_lineno or last.lineno
    if not src.lines[end - 1].endswith("\n"):
        raise PatchError(f"{src.path}: the class ends the file without a final newline")
    return end, True


def _spec_insertion(analysis: ModelAnalysis, orig_hash: str) -> Insertion:
    site = analysis.spec
    src = site.owner.source
    key_node, value = site.entries["decode"]
    key_first = not src.line_prefix(key_node.lineno, key_node.col_offset).strip()
    indent = src.line_prefix(key_node.lineno, key_node.col_offset) if key_first else None
    after = src.line_suffix(value.end_lineno, value.end_col_offset).strip()
    if key_first and indent is not None:
        if after.startswith(",") and (not after[1:].strip() or after[1:].strip()[0] == "#"):
            return Insertion(value.end_lineno, "spec", indent, _entry_lines(analysis, indent, None))
        return Insertion(key_node.lineno - 1, "spec", indent, _entry_lines(analysis, indent, None))
    if site.variable and site.assign is not None:
        stmt_indent = src.indent_of(site.assign.lineno)
        return Insertion(
            site.assign.end_lineno,
            "spec",
            stmt_indent,
            _entry_lines(analysis, stmt_indent, site.variable),
        )
    raise PatchError(
        f"{src.path.name}:{key_node.lineno}: the spec dict is written on shared lines and not "
        "assigned to a variable; cannot add entries without rewriting existing lines"
    )


def _free_names(lines: list[str]) -> set[str]:
    text = "\n".join(lines)
    try:
        tree = ast.parse(textwrap.dedent(text))
    except SyntaxError:  # bare dict entries
        tree = ast.parse("{\n" + text + "\n}")
    loaded, bound = set(), set(dir(builtins)) | {"self"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.FunctionDef):
            bound.add(node.name)
    return loaded - bound


def _import_lines(analysis: ModelAnalysis, names: set[str], sources: list[SourceFile]) -> list[str]:
    """Imports for names that copied code uses but the target module does not bind."""
    graph = analysis.graph
    lines: list[str] = []
    for name in sorted(names):
        stmt, origin = None, None
        for source in sources:
            stmt = graph.find_binding(source, name)
            if stmt is not None:
                origin = source
                break
        if stmt is None or origin is None:
            raise PatchError(f"copied code uses {name}, which no module involved defines")
        layout = PackageLayout.of(origin.path)
        if isinstance(stmt, ast.ImportFrom):
            is_init = origin.path.name == "__init__.py"
            module = absolute_module(layout, stmt.module, stmt.level, is_init)
            alias = next(a for a in stmt.names if (a.asname or a.name) == name)
            suffix = f" as {alias.asname}" if alias.asname else ""
            lines.append(f"from {module} import {alias.name}{suffix}")
        elif isinstance(stmt, ast.Import):
            alias = next(a for a in stmt.names if (a.asname or a.name.split(".")[0]) == name)
            lines.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
        else:  # defined at the top of the other module
            lines.append(f"from {layout.module} import {name}")
    return sorted(lines)


def _import_point(source: SourceFile) -> int:
    last = None
    for stmt in source.tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            last = stmt
    if last is not None:
        return last.end_lineno or last.lineno
    body = source.tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return body[0].end_lineno or 1
    return 0


def build_insertions(analysis: ModelAnalysis, original: str) -> list[Insertion]:
    target = analysis.target
    indent, step = _class_body_indent(target), _step(target)
    orig_hash = short_hash(original)
    if analysis.delegate:
        methods = _delegating_method(analysis.prefill, EXISTING_PREFILL, NEW_PREFILL, indent, step)
        methods += [""] + _delegating_method(
            analysis.decode, EXISTING_DECODE, NEW_DECODE, indent, step
        )
    else:
        methods = _copied_method(
            analysis.prefill, analysis.decode, NEW_PREFILL, DOC_PREFILL, indent, step
        )
        methods += [""] + _copied_method(
            analysis.decode, analysis.decode, NEW_DECODE, DOC_DECODE, indent, step
        )
    insertions: list[Insertion] = []
    spec_lines: list[str] = []
    if analysis.spec_is_inherited:
        override = _spec_override(analysis, indent, step)
        methods += [""] + override
        spec_lines = override
    else:
        spec_insertion = _spec_insertion(analysis, orig_hash)
        insertions.append(spec_insertion)
        spec_lines = spec_insertion.body
    point, lead_blank = _method_insert_point(analysis)
    body = ([""] if lead_blank else []) + methods + ([] if lead_blank else [""])
    insertions.append(Insertion(point, "methods", indent, body))

    bound = module_level_names(target.source.tree)
    spec_free = _free_names(spec_lines)
    if not analysis.spec_is_inherited:  # entries sit inside get_default_spec: its locals count
        spec_free -= {
            n.id
            for n in ast.walk(analysis.spec.method)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
    missing = (_free_names(methods) | spec_free) - bound
    if missing:
        sources = [
            analysis.prefill.owner.source,
            analysis.decode.owner.source,
            analysis.spec.owner.source,
        ]
        imports = _import_lines(analysis, missing, sources)
        insertions.append(Insertion(_import_point(target.source), "imports", "", imports))
    return insertions


def apply_insertions(original: str, insertions: list[Insertion]) -> str:
    lines = split_lines(original)
    newline = newline_of(original)
    orig_hash = short_hash(original)
    for ins in sorted(insertions, key=lambda i: i.before, reverse=True):
        block = make_block(ins.name, ins.indent, ins.body, orig_hash, newline)
        lines[ins.before : ins.before] = block
    return "".join(lines)
