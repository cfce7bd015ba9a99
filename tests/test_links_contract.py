"""mlcpatch.links is the one home of the link contract: the loop's numpy forms and the trainer's
PyTorch module compute the same function from the same spec, its errors are user errors, and no
other module of mlcpatch defines the forms, their math or the link-file names again."""

from __future__ import annotations

import ast
import pathlib

import numpy as np
import pytest
import torch

import mlcpatch
from mlcpatch.errors import MlcpatchError
from mlcpatch.links.files import load_links
from mlcpatch.links.forward import ACTIVATION_FUNCTIONS, FORMS, Link
from mlcpatch.links.linkfile import AgentInfo, LinkFileError
from mlcpatch.links.spec import ACTIVATIONS, VARIANTS, LinkSpec, LinkSpecError, make_spec
from mlcpatch.links.torch_module import LinkSet

PACKAGE = pathlib.Path(mlcpatch.__file__).resolve().parent
HOME = PACKAGE / "links"
# The backbones' own MLPs and norms (TVM model definitions) are not link math.
MODELS = PACKAGE / "models"

# Spelled out here rather than imported, so a renamed constant cannot hide a second definition.
FORM_NAMES = {"residual", "ln-residual"}
FILE_NAMES = {"links.json", "links.safetensors", "recursivelink.json", "links_manifest"}
# What the contract defines (functions, classes, module constants); each exactly once.
DEFINED = {
    "VARIANTS",
    "KINDS",
    "ACTIVATIONS",
    "LN_EPS",
    "LinkSpec",
    "LinkSpecError",
    "LinkFile",
    "LinkFileError",
    "AgentInfo",
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "read_safetensors_header",
    "load_links",
    "save_links",
    "gelu",
    "gelu_tanh",
    "layer_norm",
    "residual",
    "ln_residual",
    "FORMS",
    "Link",
    "RecursiveLink",
    "LinkSet",
    "closed_form_links",
}
# Library functions the forms are made of, referenced as module attributes (F.gelu, math.erf).
MATH_NAMES = {"gelu", "layer_norm", "LayerNorm", "erf"}


def contract_sites(source: str, math: bool = True) -> list[tuple[str, str, int]]:
    """(what, name, line) for every piece of the link contract a module's source defines."""
    tree = ast.parse(source)
    found: list[tuple[str, str, int]] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in DEFINED:
            found.append(("defines", node.name, node.lineno))
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in DEFINED:
                    found.append(("defines", target.id, node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in FILE_NAMES:
            found.append(("names a link file", node.value, node.lineno))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            strings = {i.value for i in items if isinstance(i, ast.Constant)}
            if FORM_NAMES <= strings:
                found.append(("lists the forms", "residual/ln-residual", node.lineno))
        elif math and isinstance(node, ast.Attribute) and node.attr in MATH_NAMES:
            found.append(("computes", node.attr, node.lineno))
    return found


def scan() -> tuple[list[str], list[tuple[str, str]]]:
    """Sites outside mlcpatch/links as 'path:line: what name'; (what, name) inside it."""
    stray: list[str] = []
    home: list[tuple[str, str]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        sites = contract_sites(
            path.read_text(encoding="utf-8"), math=not path.is_relative_to(MODELS)
        )
        if path.is_relative_to(HOME):
            home += [(what, name) for what, name, _ in sites]
        else:
            where = path.relative_to(PACKAGE.parent)
            stray += [f"{where}:{line}: {what} {name}" for what, name, line in sites]
    return stray, home


def test_the_link_contract_is_defined_only_in_mlcpatch_links() -> None:
    stray, home = scan()
    assert stray == [], "defined outside mlcpatch/links:\n" + "\n".join(stray)
    # The scan sees the real definitions, each once: a scan that finds nothing cannot pass.
    defined = sorted(name for what, name in home if what == "defines")
    assert defined == sorted(DEFINED)
    assert {name for what, name in home if what == "names a link file"} == FILE_NAMES
    assert ("lists the forms", "residual/ln-residual") in home
    assert {name for what, name in home if what == "computes"} >= {"gelu", "LayerNorm", "erf"}


def test_the_scan_flags_a_second_definition() -> None:
    source = (
        'FORMS = ("residual", "ln-residual")\n'
        'NAME = "links.json"\n'
        "def layer_norm(x):\n"
        "    return F.layer_norm(x, x.shape[-1:])\n"
        "class Thing:\n"
        '    table = {"residual": 1, "ln-residual": 2}\n'
    )
    assert sorted(contract_sites(source)) == [
        ("computes", "layer_norm", 4),
        ("defines", "FORMS", 1),
        ("defines", "layer_norm", 3),
        ("lists the forms", "residual/ln-residual", 1),
        ("lists the forms", "residual/ln-residual", 6),
        ("names a link file", "links.json", 2),
    ]
    assert all(what != "computes" for what, _, _ in contract_sites(source, math=False))


def test_every_form_and_activation_has_numpy_math() -> None:
    assert set(FORMS) == set(VARIANTS) == FORM_NAMES
    assert set(ACTIVATION_FUNCTIONS) == set(ACTIVATIONS)


def random_link_set(variant: str, activation: str) -> LinkSet:
    """Heterogeneous agents (24 and 40 wide), every parameter random, LayerNorms included."""
    specs = [
        make_spec("inner", "a", "a", 24, 24, variant, 16, activation),
        make_spec("outer", "a", "b", 24, 40, variant, 32, activation),
        make_spec("outer", "b", "a", 40, 24, variant, None, activation),
    ]
    link_set = LinkSet(specs, [AgentInfo("a", 24), AgentInfo("b", 40)])
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in link_set.parameters():
            # Matrices scaled by their fan-in, as trained links are: outputs stay O(1), so
            # float32 rounding (either side's) stays far below the 1e-5 being tested.
            scale = 0.4 if param.ndim == 1 else 1.0 / param.shape[1] ** 0.5
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return link_set


@pytest.mark.parametrize("variant", sorted(FORM_NAMES))
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_numpy_and_torch_links_compute_the_same_function(variant: str, activation: str) -> None:
    link_set = random_link_set(variant, activation)
    link_file = link_set.to_file()
    rng = np.random.default_rng(5)
    # Rows at several scales: small ones make LayerNorm's epsilon matter.
    scales = np.array([[2.0], [1.0], [0.1], [0.01]])
    for spec in link_file.links:
        module = link_set[spec.name]
        # Both built from the one spec: the module's parameters are the file's tensors.
        shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
        assert shapes == spec.param_shapes()
        rows = (rng.normal(size=(4, spec.in_dim)) * scales).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(rows)).numpy()
        got = Link.from_file(link_file, spec.name)(rows)
        assert got.shape == expected.shape == (4, spec.out_dim)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=spec.name)


def test_link_errors_are_user_errors_and_value_errors(tmp_path: pathlib.Path) -> None:
    for error in (LinkFileError, LinkSpecError):
        assert issubclass(error, MlcpatchError) and issubclass(error, ValueError)
    with pytest.raises(MlcpatchError, match="no such file"):
        load_links(tmp_path / "missing")
    with pytest.raises(ValueError, match="variant 'plain'"):
        LinkSpec("x", "inner", "a", "a", "plain", 4, 4, 4)
