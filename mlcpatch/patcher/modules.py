"""Following imports between the files of one package, without importing anything.

MLC-LLM's Gemma2-style models inherit `prefill`/`decode` from a class in a sibling module; to patch
them we must read that module. Importing it is not an option (mlc_llm needs its native library), so
imports are resolved to file paths by hand, inside the package that holds the target file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from mlcpatch.patcher.errors import PatchError
from mlcpatch.patcher.source import SourceFile


@dataclass(frozen=True)
class PackageLayout:
    """Where a file sits: `root` is the folder that holds the top package (or the file's own
    folder when it is not inside a package), `module` is the file's dotted name from there."""

    root: Path
    module: str

    @classmethod
    def of(cls, path: Path) -> PackageLayout:
        path = path.resolve()
        parts = [path.stem] if path.name != "__init__.py" else []
        folder = path.parent
        while (folder / "__init__.py").is_file():
            parts.insert(0, folder.name)
            folder = folder.parent
        return cls(folder, ".".join(parts))

    @property
    def package(self) -> str:
        return self.module.rpartition(".")[0]


def absolute_module(layout: PackageLayout, module: str | None, level: int, is_init: bool) -> str:
    """Turn `from ..x import y` into a dotted name relative to `layout.root`."""
    if level == 0:
        return module or ""
    base = layout.module if is_init else layout.package
    parts = base.split(".") if base else []
    drop = level - 1
    if drop > len(parts):
        raise PatchError(f"relative import beyond the top package in {layout.module}")
    parts = parts[: len(parts) - drop]
    if module:
        parts.append(module)
    return ".".join(parts)


def module_file(root: Path, module: str) -> Path | None:
    if not module:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@dataclass
class ClassRef:
    """A class definition found in some file."""

    source: SourceFile
    node: ast.ClassDef

    def method(self, name: str) -> ast.FunctionDef | None:
        for stmt in self.node.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == name:
                return stmt
        return None


class ModuleGraph:
    """Parsed files of one package, loaded on demand and cached."""

    def __init__(self, entry: SourceFile) -> None:
        self.entry = entry
        self.layout = PackageLayout.of(entry.path)
        self._files: dict[Path, SourceFile] = {entry.path.resolve(): entry}
        # id(source) -> (source, name -> binding statement); built once per file, so that looking
        # up every class's bases stays linear in the file's size.
        self._bindings: dict[int, tuple[SourceFile, dict[str, ast.stmt]]] = {}

    def load(self, path: Path) -> SourceFile:
        key = path.resolve()
        if key not in self._files:
            self._files[key] = SourceFile.read(key)
        return self._files[key]

    def _layout_of(self, source: SourceFile) -> PackageLayout:
        if source is self.entry:
            return self.layout
        return PackageLayout.of(source.path)

    def module_name(self, source: SourceFile) -> str:
        return self._layout_of(source).module

    def find_binding(self, source: SourceFile, name: str) -> ast.stmt | None:
        """The top-level statement of `source` that binds `name` (last one wins, as at run time)."""
        cached = self._bindings.get(id(source))
        if cached is None or cached[0] is not source:
            index: dict[str, ast.stmt] = {}
            for stmt in source.tree.body:
                for bound in _bound_names(stmt):
                    index[bound] = stmt
            cached = self._bindings[id(source)] = (source, index)
        return cached[1].get(name)

    def resolve_class(self, source: SourceFile, expr: ast.expr, depth: int = 0) -> ClassRef:
        """Find the ClassDef that a base-class expression (`Foo` or `mod.Foo`) refers to."""
        if depth > 8:
            raise PatchError(f"{source.path}: import chain too deep while resolving a base class")
        where = f"{source.path.name}:{expr.lineno}"
        if isinstance(expr, ast.Name):
            stmt = self.find_binding(source, expr.id)
            if isinstance(stmt, ast.ClassDef):
                return ClassRef(source, stmt)
            if isinstance(stmt, ast.ImportFrom):
                target, attr = self._import_from_target(source, stmt, expr.id)
                return self._class_in(target, attr, where, depth)
            raise PatchError(f"{where}: base class {expr.id} is not defined or imported here")
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            stmt = self.find_binding(source, expr.value.id)
            module = None
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if (alias.asname or alias.name.split(".")[0]) == expr.value.id:
                        module = alias.name if alias.asname else expr.value.id
            elif isinstance(stmt, ast.ImportFrom):
                target, attr = self._import_from_target(source, stmt, expr.value.id)
                module = f"{target}.{attr}"
            if module is None:
                raise PatchError(f"{where}: cannot tell what module {expr.value.id} is")
            path = self._module_path(source, module, where)
            return self._class_in_file(self.load(path), expr.attr, where, depth)
        raise PatchError(f"{where}: base class {ast.unparse(expr)} is not a plain name")

    def _import_from_target(
        self, source: SourceFile, stmt: ast.ImportFrom, name: str
    ) -> tuple[str, str]:
        is_init = source.path.name == "__init__.py"
        module = absolute_module(self._layout_of(source), stmt.module, stmt.level, is_init)
        for alias in stmt.names:
            if (alias.asname or alias.name) == name:
                return module, alias.name
        raise PatchError(f"{source.path}: {name} is not imported by line {stmt.lineno}")

    def _module_path(self, source: SourceFile, module: str, where: str) -> Path:
        root = self._layout_of(source).root
        path = module_file(root, module)
        if path is None:
            raise PatchError(
                f"{where}: cannot follow import of {module}: no such file under {root} "
                "(only modules of the model's own package can be followed)"
            )
        return path

    def _class_in(self, module: str, attr: str, where: str, depth: int) -> ClassRef:
        root = self.layout.root
        # `from pkg.mod import Name` may name a submodule rather than a class.
        if module_file(root, f"{module}.{attr}") is not None and not module_file(root, module):
            raise PatchError(f"{where}: {module}.{attr} is a module, not a class")
        path = module_file(root, module)
        if path is None:
            raise PatchError(
                f"{where}: cannot follow import of {attr} from {module}: no such file under "
                f"{root} (only modules of the model's own package can be followed)"
            )
        return self._class_in_file(self.load(path), attr, where, depth)

    def _class_in_file(self, source: SourceFile, name: str, where: str, depth: int) -> ClassRef:
        stmt = self.find_binding(source, name)
        if isinstance(stmt, ast.ClassDef):
            return ClassRef(source, stmt)
        if isinstance(stmt, ast.ImportFrom):  # re-exported, e.g. from a package __init__
            return self.resolve_class(source, ast.Name(id=name, lineno=stmt.lineno), depth + 1)
        raise PatchError(f"{where}: {name} is not a class defined in {source.path}")

    def find_method(
        self, cls: ClassRef, name: str, seen: frozenset[str] = frozenset()
    ) -> tuple[ClassRef, ast.FunctionDef] | None:
        """Method lookup in (simplified, depth-first) MRO order, across files."""
        own = cls.method(name)
        if own is not None:
            return cls, own
        key = f"{cls.source.path}:{cls.node.name}"
        if key in seen:
            return None
        for base in cls.node.bases:
            if _is_nn_module(base):
                continue
            parent = self.resolve_class(cls.source, base)
            found = self.find_method(parent, name, seen | {key})
            if found is not None:
                return found
        return None


def _is_nn_module(expr: ast.expr) -> bool:
    text = ast.unparse(expr)
    return text in {"nn.Module", "Module", "object", "tvm.relax.frontend.nn.Module"}


def _bound_names(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return {stmt.name}
    if isinstance(stmt, ast.Import):
        return {a.asname or a.name.split(".")[0] for a in stmt.names}
    if isinstance(stmt, ast.ImportFrom):
        return {a.asname or a.name for a in stmt.names}
    if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names: set[str] = set()
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        return names
    if isinstance(stmt, ast.If | ast.Try):
        names = set()
        for child in ast.iter_child_nodes(stmt):
            if isinstance(child, ast.stmt):
                names |= _bound_names(child)
        return names
    return set()


def module_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for stmt in tree.body:
        names |= _bound_names(stmt)
    return names
